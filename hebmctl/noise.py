"""Random draws that a shard of a batch can take as its rows of the whole batch's draw (DESIGN §7, §8).

Every draw in the models, samplers and priors takes a `Noise`: a `torch.Generator`, or `NoiseRows`, a
generator together with the rows `[start, stop)` of a batch of `total` rows that the caller computes.
With `NoiseRows` each draw takes the whole batch's values `[total, ...]` from the generator and keeps
these rows, so a process that computes a shard of a batch (torchrun) gets exactly the values the whole
batch gets in one process, and its generator advances exactly as one process's does. With a plain
generator the draw is the plain torch call, so one process computes the numbers it always did.
Knows rows, not ranks (`hebmctl.dist.shard` says which rows a rank computes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NoiseRows:
    """Rows `[start, stop)` of a batch of `total` rows whose noise comes from `generator`: each draw takes
    the whole batch's noise `[total, ...]` and keeps these rows, so a shard of a batch gets exactly the
    noise the whole batch would (several processes, DESIGN §8). Pass it wherever a generator goes."""

    generator: torch.Generator
    start: int
    stop: int
    total: int


Noise = torch.Generator | NoiseRows
"""What every random draw takes: a generator, or a generator with the rows of the batch this process computes."""


def _whole(shape: Sequence[int], noise: NoiseRows) -> tuple[int, ...]:
    if shape[0] != noise.stop - noise.start:
        raise ValueError(f"a draw of {shape[0]} rows from NoiseRows of rows [{noise.start}, {noise.stop}) of {noise.total}")
    return (noise.total, *shape[1:])


def randn(shape: Sequence[int], noise: Noise, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """N(0, 1) values of `shape` `[B, ...]`; with NoiseRows, rows `[start, stop)` of a `[total, ...]` draw (B = stop - start)."""
    if isinstance(noise, NoiseRows):
        whole = torch.randn(_whole(shape, noise), generator=noise.generator, device=device, dtype=dtype)
        return whole[noise.start : noise.stop]
    return torch.randn(tuple(shape), generator=noise, device=device, dtype=dtype)


def randint(high: int, shape: Sequence[int], noise: Noise, device: torch.device | None = None) -> Tensor:
    """Integers in `[0, high)` of `shape` `[B, ...]` (int64); with NoiseRows, rows `[start, stop)` of a `[total, ...]` draw."""
    if isinstance(noise, NoiseRows):
        return torch.randint(high, _whole(shape, noise), generator=noise.generator, device=device)[noise.start : noise.stop]
    return torch.randint(high, tuple(shape), generator=noise, device=device)


def generator_of(noise: Noise) -> torch.Generator:
    """The generator behind `noise`."""
    return noise.generator if isinstance(noise, NoiseRows) else noise
