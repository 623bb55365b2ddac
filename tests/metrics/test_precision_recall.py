import numpy as np
import pytest

from hebmctl.metrics.precision_recall import kth_neighbour_radii, precision_recall


def test_radii_are_the_kth_other_neighbour():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert kth_neighbour_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert kth_neighbour_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError):
        kth_neighbour_radii(x, 4)


def test_same_set_is_perfect_and_a_far_set_is_zero():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    same = precision_recall(real, real)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(real, real + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_half_support_keeps_precision_and_halves_recall():
    """Fake uniform on the left half of the real square: every fake point is realistic (precision ~1), half of the
    real points are covered (recall ~0.5)."""
    rng = np.random.default_rng(1)
    real = rng.uniform(size=(3000, 2))
    fake = rng.uniform(size=(3000, 2)) * np.array([0.5, 1.0])
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.97
    assert abs(pr["recall"] - 0.5) < 0.04


def test_mode_collapse_keeps_precision_and_loses_recall():
    """Fake points collapsed onto the centres of two of four real clusters (each a tiny blob): precision 1, recall 1/2."""
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    real = np.concatenate([c + rng.normal(size=(500, 2)) for c in centres])
    fake = np.concatenate([c + 0.05 * rng.normal(size=(1000, 2)) for c in centres[:2]])
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.99
    assert pr["recall"] < 0.2  # tiny blobs cover little even of their own clusters
    spread = precision_recall(real, np.concatenate([c + rng.normal(size=(500, 2)) for c in centres]))
    assert spread["recall"] > 0.9
