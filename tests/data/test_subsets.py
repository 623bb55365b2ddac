"""Seeded, class-stratified subsets (`hebmctl.data.subsets`): what `--limit N` and its kin load (issue 14, item 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hebmctl.data import load_split
from hebmctl.data.subsets import SUBSET_SEED, class_quotas, indices_sha256, subset_positions

BUILTIN = "builtin:mnist-10k"


def test_stratified_counts_follow_class_sizes() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])  # 100 rows, sorted by class like a folder listing
    rows = subset_positions(labels, 20, seed=3)
    assert np.bincount(labels[rows], minlength=4).tolist() == [10, 6, 3, 1]  # 20 * (50, 30, 15, 5) / 100 exactly
    assert np.all(np.diff(rows) > 0) and len(np.unique(rows)) == 20


def test_quotas_use_largest_remainders_and_sum_to_n() -> None:
    labels = np.repeat(np.arange(3), [5, 3, 2])  # exact shares of 7: 3.5, 2.1, 1.4 -> floors 3, 2, 1, one left for class 0
    assert class_quotas(labels, 7, np.random.default_rng(0)) == {0: 4, 1: 2, 2: 1}
    balanced = np.repeat(np.arange(10), 100)
    for seed in range(5):  # 15 of 10 equal classes: 1 each, then 5 classes get a second; which 5 depends on the seed
        quotas = class_quotas(balanced, 15, np.random.default_rng(seed))
        assert sum(quotas.values()) == 15 and sorted(quotas.values()) == [1] * 5 + [2] * 5


def test_deterministic_and_seed_dependent() -> None:
    labels = np.repeat(np.arange(10), 1000)
    a, b = subset_positions(labels, 500), subset_positions(labels, 500)
    assert np.array_equal(a, b)
    assert np.array_equal(a, subset_positions(labels, 500, seed=SUBSET_SEED))
    other = subset_positions(labels, 500, seed=1)
    assert not np.array_equal(a, other) and len(np.intersect1d(a, other)) < 100  # two 5 % draws share about 25 rows
    assert np.array_equal(subset_positions(labels, 10_000), np.arange(10_000))  # n >= M: every row, in order


def test_unlabelled_rows_are_a_plain_random_subset() -> None:
    labels = np.full(1000, -1)
    rows = subset_positions(labels, 100)
    assert len(rows) == 100 and rows.max() > 500 and rows.min() < 500  # spread over the set, not its first 100 rows


def test_class_sorted_folder_gives_every_class(tmp_path: Path) -> None:
    """A CIFAR-like folder (train/<class>/*.png, listed sorted, so grouped by class): a small subset holds all classes."""
    for c in range(10):
        for i in range(12):
            folder = tmp_path / "cifar" / "train" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), 10 * c + i, np.uint8)).save(folder / f"{i:04d}.png")
    for c in range(10):
        (tmp_path / "cifar" / "test" / f"class{c}").mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), c, np.uint8)).save(tmp_path / "cifar" / "test" / f"class{c}" / "0000.png")
    data = load_split(f"folder:{tmp_path / 'cifar'}", "train", limit=20)
    assert np.bincount(data.labels, minlength=10).tolist() == [2] * 10
    assert np.array_equal(data.images[:, 0, 0, 0], 10 * data.labels + data.index % 12)  # pixels match the rows chosen
    record = data.subset
    assert record is not None and (record.n, record.population, record.seed) == (20, 120, SUBSET_SEED)
    assert record.class_counts == {str(c): 2 for c in range(10)} and record.index_sha256 == indices_sha256(data.index)
    assert load_split(f"folder:{tmp_path / 'cifar'}", "train").subset is None  # whole split: nothing to record


def test_limit_on_a_real_split_is_stratified_and_excludes_first() -> None:
    full = load_split(BUILTIN, "all", exclude_classes=[1, 7])
    data = load_split(BUILTIN, "all", exclude_classes=[1, 7], limit=100)
    assert not np.isin(data.labels, [1, 7]).any() and data.subset.population == len(full)
    expected = np.round(100 * np.bincount(full.labels, minlength=10) / len(full))
    assert np.abs(np.bincount(data.labels, minlength=10) - expected).max() <= 1
    assert data.index.max() > 5000  # drawn from the whole split, not its first rows


@pytest.mark.parametrize("limit", [1, 9])
def test_limit_below_the_class_count(limit: int) -> None:
    data = load_split(BUILTIN, "test", limit=limit)
    assert len(data) == limit and len(np.unique(data.labels)) == limit  # each chosen row from another class
