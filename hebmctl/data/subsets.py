"""Seeded, class-stratified subsets: what "N images of a split" means everywhere (`--limit`, `--ref-limit`,
`--eval-limit`, `eval fid --prior recon`).

Taking the first N rows is not a sample: folder and zip sets list files sorted by path, so CIFAR-10's
first 5,000 test images are five classes. A subset here is drawn with its own seed (``SUBSET_SEED``,
not the stage's training seed, so that every stage given the same limit sees the same images), each
class gets a share proportional to its size (largest remainders, ties broken by the seed), and the
chosen rows keep their order in the split. ``subset_record`` describes a subset for the manifest.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hebmctl.schemas.common import SubsetRecord

SUBSET_SEED = 0
"""The seed of every data subset unless a caller passes another one."""

METHOD = "stratified-random-v1"
"""Name of the draw below, recorded in manifests; a change to the draw gets a new name."""


def class_quotas(labels: np.ndarray, n: int, rng: np.random.Generator) -> dict[int, int]:
    """How many rows of each label (int64 ``[M]``, -1 = unknown counts as one more class) a subset of
    ``n <= M`` rows takes: ``floor(n * count / M)`` each, then one more for the classes with the largest
    remainders (ties in a seeded random order). The quotas sum to ``n`` and never exceed a class's count."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    left = n - int(quotas.sum())
    tie_break = rng.permutation(len(classes))
    order = np.lexsort((tie_break, -(exact - quotas)))  # largest remainder first
    quotas[order[:left]] += 1
    return {int(c): int(q) for c, q in zip(classes, quotas)}


def subset_positions(labels: np.ndarray, n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Positions (int64 ``[min(n, M)]``, ascending) of a seeded, class-stratified random subset of
    ``n`` rows among rows with these labels (int64 ``[M]``); all positions when ``n >= M``."""
    labels = np.asarray(labels, dtype=np.int64)
    if n >= labels.size:
        return np.arange(labels.size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for label, quota in class_quotas(labels, n, rng).items():
        members = np.flatnonzero(labels == label)
        chosen.append(members[rng.permutation(members.size)[:quota]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def indices_sha256(index: np.ndarray) -> str:
    """sha256 (hex) of the chosen rows' split positions as little-endian int64."""
    return hashlib.sha256(np.asarray(index, dtype="<i8").tobytes()).hexdigest()


def subset_record(labels: np.ndarray, index: np.ndarray, population: int, seed: int = SUBSET_SEED) -> SubsetRecord:
    """What a manifest records about a subset: labels and index (int64 ``[n]``) of the chosen rows,
    drawn from ``population`` rows with ``seed``."""
    classes, counts = np.unique(labels, return_counts=True)
    return SubsetRecord(method=METHOD, seed=seed, n=int(len(index)), population=int(population),
                        class_counts={str(int(c)): int(k) for c, k in zip(classes, counts)}, index_sha256=indices_sha256(index))
