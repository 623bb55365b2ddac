"""MIG and MIG-sup on codes whose answer is known by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from hebmctl.metrics.mig import active_dims, discretize, entropy, mig, mig_per_factor, mig_sup, mutual_information, normalised_mi


def _grid(*sizes: int) -> np.ndarray:
    """Every combination of factor values once: int64 ``[prod(sizes), K]`` (factors exactly independent)."""
    return np.array(list(itertools.product(*(range(s) for s in sizes))), dtype=np.int64)


def test_plug_in_estimates_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 7, 5000), rng.integers(0, 20, 5000)
    b = np.where(rng.random(5000) < 0.5, a * 2, b)  # dependent
    assert mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)
    assert entropy(a) == pytest.approx(mutual_info_score(a, a), abs=1e-12)
    assert entropy(np.array([3, 3, 3])) == 0.0


def test_discretize_uses_equal_width_bins_and_handles_constant_dims() -> None:
    codes = np.array([[0.0, 5.0], [0.5, 5.0], [0.99, 5.0], [1.0, 5.0]])
    assert discretize(codes, bins=2).tolist() == [[0, 0], [1, 0], [1, 0], [1, 0]]
    with pytest.raises(ValueError, match="NaN"):
        discretize(np.array([[np.nan]]))


def test_codes_that_copy_the_factors_score_one() -> None:
    factors = _grid(3, 4, 10, 6)
    codes = factors * np.array([2.0, -0.5, 0.1, 7.0]) + np.array([1.0, 3.0, -2.0, 0.0])  # affine copies
    codes = np.c_[codes, np.zeros(len(codes))]  # plus a dead (constant) dimension
    nmi = normalised_mi(codes, factors)
    assert nmi[:, :4] == pytest.approx(np.eye(4), abs=1e-12) and np.all(nmi[:, 4] == 0)
    assert mig(nmi) == pytest.approx(1.0)
    assert mig_sup(nmi, active_dims(codes)) == pytest.approx(1.0)
    assert mig_sup(nmi) == pytest.approx(0.8)  # over all 5 dims: the dead one's gap is 0


def test_codes_independent_of_the_factors_score_about_zero() -> None:
    rng = np.random.default_rng(1)
    factors = np.c_[rng.integers(0, 4, 10_000), rng.integers(0, 10, 10_000), rng.integers(0, 8, 10_000)]
    codes = rng.normal(size=(10_000, 6))
    nmi = normalised_mi(codes, factors)
    assert nmi.max() < 0.02
    assert 0 <= mig(nmi) < 0.05 and 0 <= mig_sup(nmi) < 0.05


def test_one_dimension_with_two_factors_is_penalised_by_mig_sup_only() -> None:
    factors = _grid(4, 4, 5)
    a, b, c = factors.T
    codes = np.c_[4 * a + b, c].astype(float)  # z0 holds a and b (16 values, one bin each); z1 = c
    nmi = normalised_mi(codes, factors)
    assert nmi == pytest.approx(np.array([[1, 0], [1, 0], [0, 1]]), abs=1e-12)
    # MIG: each factor has one informative dimension and nothing in the other -> 1, 1, 1.
    assert mig_per_factor(nmi) == pytest.approx([1, 1, 1]) and mig(nmi) == pytest.approx(1.0)
    # MIG-sup: z0's top two factors tie (gap 0), z1 knows c only (gap 1) -> 0.5.
    assert mig_sup(nmi) == pytest.approx(0.5)


def test_one_factor_in_two_dimensions_is_penalised_by_mig_only() -> None:
    factors = _grid(4, 5)
    a, b = factors.T
    codes = np.c_[a, -a, b].astype(float)
    nmi = normalised_mi(codes, factors)
    assert mig_per_factor(nmi) == pytest.approx([0, 1]) and mig(nmi) == pytest.approx(0.5)
    assert mig_sup(nmi) == pytest.approx(1.0)


def test_partial_information_is_normalised_by_the_factor_entropy() -> None:
    factors = _grid(4, 3)
    codes = np.c_[factors[:, 0] // 2, factors[:, 1]].astype(float)  # z0 keeps one of a's two bits
    nmi = normalised_mi(codes, factors)
    assert nmi[0, 0] == pytest.approx(np.log(2) / np.log(4))  # I = log 2, H(a) = log 4
    assert mig(nmi) == pytest.approx((0.5 + 1.0) / 2)
    assert mig_sup(nmi) == pytest.approx((0.5 + 1.0) / 2)


def test_single_dimension_and_constant_factor_edge_cases() -> None:
    factors = _grid(5, 2)
    nmi = normalised_mi(factors[:, :1].astype(float), factors)
    assert mig(nmi) == pytest.approx(0.5)  # J = 1: the gap is the top value (1 for a, 0 for b)
    assert mig_sup(nmi, np.array([False])) is None
    with pytest.raises(ValueError, match="single value"):
        normalised_mi(np.zeros((10, 1)), np.c_[np.arange(10), np.zeros(10, dtype=int)])
