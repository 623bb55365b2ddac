"""Exponential moving average of a module's weights."""

from __future__ import annotations

import torch


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, with d = min(decay, (1 + step) / (10 + step)); buffers copied.

    The warm-up of d lets the average follow the fast early changes of a fresh model.
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - d)
        for e, b in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(b)
