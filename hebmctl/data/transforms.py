"""Pixel transforms between stored uint8 images and the model's [-1, 1] float tensors."""

from __future__ import annotations

import numpy as np
import torch


def _writable(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable view or copy (torch.from_numpy warns on read-only arrays)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` (numpy or torch) -> float32 torch ``[N, C, H, W]`` in [-1, 1].

    Computes ``x / 127.5 - 1``; the result is a new contiguous tensor on the input's device
    (CPU for numpy input). Raises ValueError for another dtype or rank.
    """
    tensor = torch.from_numpy(_writable(images)) if isinstance(images, np.ndarray) else images
    if tensor.dtype != torch.uint8 or tensor.dim() != 4:
        raise ValueError(f"expected uint8 [N,H,W,C] images, got {tensor.dtype} {tuple(tensor.shape)}")
    unit = tensor.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
    return unit.contiguous()


def from_unit_range(x: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in [-1, 1] -> uint8 numpy ``[N, H, W, C]`` (C-contiguous).

    Computes ``round((x + 1) * 127.5)`` after clamping to [-1, 1], so it inverts
    ``to_unit_range`` exactly on uint8 data. Raises ValueError for a wrong rank or for NaN
    values (a diverged sampler must not be silently written out as an image).
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected float [N,C,H,W], got {x.dtype} {tuple(x.shape)}")
    values = x.detach().to("cpu", torch.float32)
    if torch.isnan(values).any():
        raise ValueError("cannot convert images that contain NaN values")
    pixels = ((values.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())
