"""Minibatches of cached u0 for prior training: in memory when the cache fits, streamed otherwise.

Batch `step` is a pure function of (seed, step), so a resumed run draws exactly the batches an
uninterrupted one would have; no sampler state needs to be checkpointed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from hebmctl.io.latent_store import read_labels

IN_MEMORY_LIMIT_BYTES = 4 * 2**30
"""u0 caches up to this size (as float32) are loaded whole; larger ones are read per batch."""


class LatentBatches:
    """Random rows of `u0 [N, S, D]` flattened to `[N * S, D]` samples, on `device`."""

    def __init__(self, path: Path, device: torch.device, seed: int, in_memory_limit_bytes: int = IN_MEMORY_LIMIT_BYTES) -> None:
        self.path, self.device, self.seed = Path(path), device, seed
        with h5py.File(self.path, "r") as handle:
            n, s, d = handle["u0"].shape
        self.n_images, self.samples_per_image, self.dim = n, s, d
        self.in_memory = n * s * d * 4 <= in_memory_limit_bytes
        self._u0: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        if self.in_memory:
            with h5py.File(self.path, "r") as handle:
                self._u0 = torch.from_numpy(handle["u0"][...].astype(np.float32).reshape(n * s, d)).to(device)

    def __len__(self) -> int:
        return self.n_images * self.samples_per_image

    def _rows(self, step: int, batch_size: int) -> torch.Tensor:
        """The cache rows `[batch_size]` of update `step`: drawn uniformly with replacement from (seed, step)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(len(self), (batch_size,), generator=gen)

    def batch(self, step: int, batch_size: int, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """Batch of update `step`: `[batch_size, D]` float32, rows drawn uniformly with replacement; with `shard`
        `(start, stop)`, only those rows of that batch, `[stop - start, D]` (one process's part of it)."""
        rows = self._rows(step, batch_size)
        if shard is not None:
            rows = rows[shard[0] : shard[1]]
        return self._gather(rows)

    def batch_with_labels(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of `batch(step, batch_size)` `[B, D]` and their images' labels `[B]` int64 (sample r of image i has i's label)."""
        if self._labels is None:
            self._labels = torch.from_numpy(read_labels(self.path).astype(np.int64)).to(self.device)
        rows = self._rows(step, batch_size)
        return self._gather(rows), self._labels[(rows // self.samples_per_image).to(self.device)]

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """u0 of cache rows `[B]` -> `[B, D]` on the device (from memory, or read from the file)."""
        if self._u0 is not None:
            return self._u0[rows.to(self.device)]
        return self._read_rows(rows).to(self.device)

    def _read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Streamed path: h5py reads sorted unique image rows, then the sample axis is picked in memory."""
        image_rows, sample_idx = rows // self.samples_per_image, rows % self.samples_per_image
        unique, inverse = torch.unique(image_rows, sorted=True, return_inverse=True)
        with h5py.File(self.path, "r") as handle:
            block = torch.from_numpy(handle["u0"][unique.numpy()].astype(np.float32))  # [U, S, D]
        return block[inverse, sample_idx]
