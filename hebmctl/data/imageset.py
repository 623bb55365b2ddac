"""``ImageSet``: the in-memory result of loading one split of a data set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from hebmctl.schemas.common import SubsetRecord


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One loaded split of a data set.

    Fields:
        images: uint8 ``[N, H, W, C]``, C-contiguous; C = 1 (gray) or 3 (RGB).
        labels: int64 ``[N]``; -1 where the label is unknown.
        index: int64 ``[N]``; each row's position in the original, unfiltered split (before
            ``exclude_classes`` and ``limit``), see ``hebmctl.data.load_split``.
        class_names: name of each label id (``class_names[k]`` for label k); may be empty.
        spec: the data spec string as given to ``load_split``.
        split: ``"train"``, ``"test"`` or ``"all"``.
        factors: int64 ``[N, K]`` generative factor values (``factors[n, k]`` in
            ``0 .. factor_sizes[k] - 1``) for data sets that know them (``builtin:shapes``);
            None for every other data set.
        factor_names: name of each factor column (K names; empty without factors).
        factor_sizes: number of values of each factor (K sizes; empty without factors).
        subset: the seeded random subset this set is, when loaded with a limit below its size (None: every row).

    Equality is identity (``eq=False``: arrays have no single truth value); compare two sets
    with ``fingerprint()``.
    """

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    class_names: tuple[str, ...]
    spec: str
    split: str
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    subset: SubsetRecord | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N,H,W,C], got {self.images.dtype} {self.images.shape}")
        if self.images.shape[3] not in (1, 3) or not self.images.flags.c_contiguous:
            raise ValueError(f"images must be C-contiguous with C in (1, 3), got {self.images.shape}")
        n = self.images.shape[0]
        for name in ("labels", "index"):
            array = getattr(self, name)
            if array.dtype != np.int64 or array.shape != (n,):
                raise ValueError(f"{name} must be int64 [{n}], got {array.dtype} {array.shape}")
        self._check_factors(n)

    def _check_factors(self, n: int) -> None:
        if self.factors is None:
            if self.factor_names or self.factor_sizes:
                raise ValueError("factor_names and factor_sizes need factors")
            return
        k = len(self.factor_names)
        if self.factors.dtype != np.int64 or self.factors.shape != (n, k) or len(self.factor_sizes) != k:
            raise ValueError(f"factors must be int64 [{n}, {k}] with {k} sizes, got {self.factors.dtype} {self.factors.shape}, "
                f"{len(self.factor_sizes)} sizes")
        if n and ((self.factors < 0).any() or (self.factors >= np.array(self.factor_sizes)).any()):
            raise ValueError(f"factor values must lie in 0 .. size - 1 (sizes {self.factor_sizes})")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        _, height, width, channels = self.images.shape
        return int(height), int(width), int(channels)

    @property
    def num_channels(self) -> int:
        """C: 1 for gray, 3 for RGB."""
        return int(self.images.shape[3])

    def fingerprint(self) -> str:
        """sha256 (hex) over the shape, the image bytes, the labels and the index (little-endian int64),
        and, only for sets that have them, the factor names, sizes and values.

        Deterministic across runs and machines; changes with any pixel, label, row position or
        factor value. Sets without factors keep the fingerprint they had before factors existed.
        """
        digest = hashlib.sha256()
        digest.update(("uint8" + repr(tuple(int(d) for d in self.images.shape))).encode("ascii"))
        digest.update(self.images.reshape(-1).data)
        digest.update(self.labels.astype("<i8", copy=False).tobytes())
        digest.update(self.index.astype("<i8", copy=False).tobytes())
        if self.factors is not None:
            digest.update(("factors" + repr((self.factor_names, tuple(map(int, self.factor_sizes))))).encode("utf-8"))
            digest.update(self.factors.astype("<i8", copy=False).tobytes())
        return digest.hexdigest()
