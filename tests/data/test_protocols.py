"""The anchors' pooled 80/20 anomaly split (`pooled:heldout=D,seed=S:BASE`) on the real MNIST files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hebmctl.data import DataError, load_split
from hebmctl.data.protocols import parse_pooled, pooled_of, pooled_rows, pooled_spec
from hebmctl.data.readers import describe_split, load_labels
from hebmctl.data.subsets import SUBSET_SEED, subset_positions
from hebmctl.schemas.common import absolute_data_spec
from hebmctl.schemas.protocols import PooledSplit

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Images per digit in the real MNIST label files, train + test (60,000 + 10,000).
MNIST_COUNTS = {0: 5923 + 980, 1: 6742 + 1135, 4: 5842 + 982}


@pytest.fixture(scope="module")
def mnist_spec() -> str:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA}")
    return f"mnist:{SHARED_DATA / 'mnist'}"


@pytest.fixture(scope="module")
def pooled_labels(mnist_spec: str) -> np.ndarray:
    return load_labels(mnist_spec, "all")


@pytest.mark.parametrize("heldout", [1, 4])
def test_sizes_and_positive_fraction_from_the_mnist_label_files(pooled_labels, mnist_spec, heldout):
    assert len(pooled_labels) == 70_000 and int((pooled_labels == heldout).sum()) == MNIST_COUNTS[heldout]
    n_normal = 70_000 - MNIST_COUNTS[heldout]
    record = describe_split(pooled_spec(heldout, 0, mnist_spec))
    assert record["n_train"] == n_normal * 4 // 5  # Zenati: int(0.8 * n_normal), rounded down
    assert record["n_test"] == n_normal - n_normal * 4 // 5 + MNIST_COUNTS[heldout]
    assert record["n_test_positive"] == MNIST_COUNTS[heldout]
    expected = {1: (49_698, 20_302, 0.38799), 4: (50_540, 19_460, 0.35067)}[heldout]
    assert (record["n_train"], record["n_test"]) == expected[:2]
    assert record["positive_fraction"] == pytest.approx(expected[2], abs=1e-5)


def test_train_and_test_are_disjoint_and_cover_the_pooled_set(pooled_labels):
    protocol = PooledSplit(heldout=4, seed=0, base="mnist:X")
    train, test = pooled_rows(pooled_labels, protocol, "train"), pooled_rows(pooled_labels, protocol, "test")
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(70_000))
    assert not (pooled_labels[train] == 4).any() and (pooled_labels[test] == 4).sum() == MNIST_COUNTS[4]
    # the shuffle mixes MNIST's own splits: both hold training images (test split = pooled rows 60,000..69,999)
    assert (train >= 60_000).any() and (train < 60_000).any()
    # every normal digit keeps about 80 % of its images in train (a shuffle, not a sort by label)
    for digit in (0, 7):
        share = (pooled_labels[train] == digit).sum() / (pooled_labels == digit).sum()
        assert 0.77 < share < 0.83


def test_seeded_determinism(pooled_labels):
    rows = {seed: pooled_rows(pooled_labels, PooledSplit(heldout=1, seed=seed, base="mnist:X"), "train") for seed in (0, 1)}
    again = pooled_rows(pooled_labels, PooledSplit(heldout=1, seed=0, base="mnist:X"), "train")
    assert np.array_equal(rows[0], again)
    assert len(rows[0]) == len(rows[1]) and not np.array_equal(rows[0], rows[1])
    shared = len(np.intersect1d(rows[0], rows[1])) / len(rows[0])
    assert 0.78 < shared < 0.82  # independent 80 % draws: a train image of seed 0 is in seed 1's train with probability 0.8


def test_load_split_of_a_pooled_spec_reads_the_pooled_images(mnist_spec, pooled_labels):
    spec = pooled_spec(4, 3, mnist_spec)
    test = load_split(spec, "test", limit=300)
    pooled = load_split(mnist_spec, "all")
    all_rows = pooled_rows(pooled_labels, PooledSplit(heldout=4, seed=3, base=mnist_spec), "test")
    expected_rows = all_rows[subset_positions(pooled_labels[all_rows], 300, SUBSET_SEED)]  # --limit: the seeded stratified subset
    assert np.array_equal(test.index, expected_rows)
    assert np.array_equal(test.images, pooled.images[expected_rows]) and np.array_equal(test.labels, pooled.labels[expected_rows])
    assert load_split(spec, "test", limit=300).fingerprint() == test.fingerprint()
    assert load_split(pooled_spec(4, 4, mnist_spec), "test", limit=300).fingerprint() != test.fingerprint()
    record_a, record_b = describe_split(spec), describe_split(pooled_spec(4, 4, mnist_spec))
    assert record_a["test_rows_sha256"] != record_b["test_rows_sha256"] and record_a["n_test"] == record_b["n_test"]


def test_spec_parsing_and_errors(mnist_spec):
    assert parse_pooled("heldout=4,seed=2:builtin:mnist-10k") == PooledSplit(heldout=4, seed=2, base="builtin:mnist-10k")
    assert pooled_of("pooled:heldout=7:builtin:mnist-10k").seed == 0
    assert pooled_of("builtin:mnist-10k") is None
    relative = absolute_data_spec("pooled:heldout=4,seed=0:mnist:data/mnist")
    assert relative == f"pooled:heldout=4,seed=0:mnist:{Path('data/mnist').absolute()}"
    for bad, message in [("pooled:seed=1:builtin:mnist-10k", "needs heldout"), ("pooled:heldout=4,fold=2:builtin:mnist-10k", "fold"),
                         ("pooled:heldout=x:builtin:mnist-10k", "bad heldout"),
                         ("pooled:heldout=4,seed=-1:builtin:mnist-10k", "bad heldout"),
                         ("pooled:heldout=4:pooled:heldout=3:builtin:mnist-10k", "pools a pooled"),
                         ("pooled:heldout=12:builtin:mnist-10k", "holds out class 12")]:
        with pytest.raises(DataError, match=message):
            load_split(bad, "train", limit=5)


def test_pooled_needs_labels(tmp_path):
    np.savez(tmp_path / "unlabelled.npz", images=np.zeros((20, 4, 4), np.uint8))
    with pytest.raises(DataError, match="labelled"):
        load_split(f"pooled:heldout=0:npz:{tmp_path / 'unlabelled.npz'}", "train")


def test_excluding_a_class_only_the_test_folder_holds(tmp_path):
    """A user's own anomaly split: train/ lacks class '3', test/ has it; excluding it is accepted, an unknown id is not."""
    digits = load_split("builtin:mnist-10k", "test", limit=200)
    for split, classes in (("train", (0, 1, 2)), ("test", (0, 1, 2, 3))):
        for digit in classes:
            (tmp_path / split / str(digit)).mkdir(parents=True)
            for n, image in enumerate(digits.images[digits.labels == digit][:3]):
                Image.fromarray(image[..., 0]).save(tmp_path / split / str(digit) / f"{n}.png")
    spec = f"folder:{tmp_path}"
    train = load_split(spec, "train", exclude_classes=[3])
    assert len(train) == 9 and set(train.labels.tolist()) == {0, 1, 2}
    with pytest.raises(DataError, match="Cannot exclude class 4"):
        load_split(spec, "train", exclude_classes=[4])
