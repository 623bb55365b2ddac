"""``RawSplit``: a split whose labels are known but whose pixels may not be decoded yet.

Every reader returns one, so that ``exclude_classes`` and ``limit`` are applied before any
image file is decoded (loading 100 images of a 60,000-image zip decodes 100 files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Decoder = Callable[[np.ndarray], np.ndarray]
"""Maps row numbers (int64 ``[n]``, into the RawSplit) to uint8 images ``[n, H, W, C]``."""


@dataclass(frozen=True, eq=False)
class RawSplit:
    """labels: int64 ``[M]`` (-1 unknown); index: int64 ``[M]`` (position in the unfiltered
    split); decode: rows -> uint8 ``[n, H, W, C]``; class_names: name of each label id;
    close: releases open files (call it after the last ``decode``); factors: int64 ``[M, K]``
    generative factor values of data sets that know them (None otherwise), named by
    ``factor_names`` with ``factor_sizes`` values each (see ``ImageSet``)."""

    labels: np.ndarray
    index: np.ndarray
    decode: Decoder
    class_names: tuple[str, ...]
    close: Callable[[], None] = lambda: None
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()


def from_arrays(images: np.ndarray, labels: np.ndarray, index: np.ndarray, class_names: tuple[str, ...]) -> RawSplit:
    """Wrap decoded arrays: images uint8 ``[M, H, W, C]``, labels and index int64 ``[M]``."""
    return RawSplit(
        labels=np.asarray(labels, dtype=np.int64),
        index=np.asarray(index, dtype=np.int64),
        decode=lambda rows: np.ascontiguousarray(images[rows]),
        class_names=class_names,
    )


def holdout_positions(count: int, split: str) -> np.ndarray:
    """Positions (int64) of ``split`` in a set of ``count`` items with no train/test split of its own.

    Every 10th item (positions 9, 19, 29, ...) is "test", the rest "train"; "all" is everything.
    """
    positions = np.arange(count, dtype=np.int64)
    if split == "all":
        return positions
    is_test = positions % 10 == 9
    return positions[is_test] if split == "test" else positions[~is_test]
