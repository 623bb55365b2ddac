"""Batched sampling of images from a prior: u_0 -> z = T(tau * u_0) -> x = decoder mean(z) (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from hebmctl.errors import ConfigError, DivergenceError
from hebmctl.priors.base import Prior
from hebmctl.priors.labels import ClassCondition
from hebmctl.samplers import ChainStats


@dataclass(frozen=True)
class SampleBatch:
    """One batch: u0, z `[B, D]`, images x `[B, C, H, W]` in [-1, 1] (all on the CPU), chain statistics."""

    u0: Tensor
    z: Tensor
    x: Tensor
    stats: list[ChainStats]


def batch_generator(seed: int, start: int, device: torch.device) -> torch.Generator:
    """The generator of the batch that starts at image `start`: seeded by (seed, start), so the images do not
    depend on what else is drawn."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)


def sample_batches(prior: Prior, n: int, batch_size: int, seed: int, temperature: float,
                   rows: tuple[int, int] | None = None, condition: ClassCondition | None = None) -> Iterator[SampleBatch]:
    """n samples in batches of batch_size (with `rows` `(start, stop)`, start a multiple of batch_size: only the
    batches of samples start .. stop - 1, exactly as they come in the whole run, one process's share; image i under
    row i of `condition`, targets `[n, M]`, when given); raises DivergenceError (non-finite u_0) or ConfigError
    (non-finite z or x at this temperature) before anything is returned for that batch."""
    model = prior.backbone
    first, stop = rows if rows is not None else (0, n)
    if first < stop and first % batch_size:  # an empty range (a rank without batches) may start anywhere
        raise ValueError(f"rows must start at a whole batch: {first} is not a multiple of {batch_size}")
    for start in range(first, stop, batch_size):
        generator = batch_generator(seed, start, prior.device)
        batch_stop = min(start + batch_size, stop)
        sampler = prior if condition is None else prior.conditioned(condition.rows(start, batch_stop))
        u0, chain = sampler.draw(batch_stop - start, generator)
        _require_finite(u0, prior)
        with torch.no_grad():
            z = model.u_to_z(temperature * u0)  # DESIGN §3: z = T(tau * u_0)
            x = model.decode(z).clamp(-1, 1)
        _require_finite_images(z, x, temperature)
        yield SampleBatch(u0.cpu(), z.cpu(), x.cpu(), chain)


def _require_finite(u0: Tensor, prior: Prior) -> None:
    bad = int((~torch.isfinite(u0).all(dim=1)).sum())
    if bad:
        raise DivergenceError(
            f"The {prior.kind} sampler diverged: {bad} of {u0.shape[0]} latents in a batch are not finite "
            f"(K = {prior.n_steps}, step {prior.step_size:g}). Nothing was written as samples; use a smaller "
            "--step-size / --step-scale or fewer --langevin-steps."
        )


def _require_finite_images(z: Tensor, x: Tensor, temperature: float) -> None:
    if not (torch.isfinite(z).all() and torch.isfinite(x).all()):
        raise ConfigError(
            f"--temperature {temperature:g} makes the latents z = T(tau * u_0) or the images non-finite (float32 overflows). "
            "Use a temperature of about 0.5 to 1.5 (1 samples the prior itself). Nothing was written as samples."
        )
