"""Mutual-information disentanglement metrics: MIG (Chen et al. 2018) and MIG-sup (Li et al. 2020).

Notation: codes ``z`` ``[N, J]`` (J code dimensions, e.g. posterior means), discrete factors
``v`` ``[N, K]`` (K factors, integer values). ``I(v_k; z_j)`` is the mutual information and
``H(v_k)`` the entropy of factor k, both in nats, and ``Ī(k, j) = I(v_k; z_j) / H(v_k)`` the
normalised mutual information, in [0, 1].

- **MIG** (Chen, Li, Grosse, Duvenaud 2018, "Isolating sources of disentanglement in VAEs"):
  ``MIG = 1/K sum_k ( Ī(k, j*_k) - Ī(k, j°_k) )``, where ``j*_k`` and ``j°_k`` are the code
  dimensions with the largest and second-largest MI with factor k. One dimension per factor, and
  no other dimension knowing it, gives 1; a factor spread over two dimensions gives 0.
- **MIG-sup** (Li, Murkute, Gyawali, Wang 2020, "Progressive learning and disentanglement of
  hierarchical representations", sec. 4): the same gap taken the other way round,
  ``MIG-sup = 1/J sum_j ( Ī(k*_j, j) - Ī(k°_j, j) )``, where ``k*_j`` and ``k°_j`` are the factors
  with the largest and second-largest *normalised* MI with dimension j. It penalises a dimension
  that encodes several factors, which MIG does not. Li et al.'s released code (``metric_MIG.py``)
  averages over the *active* dimensions only (variance of the posterior mean > 1e-2); ``mig_sup``
  takes a column selection so that callers can report both.

With a single dimension (J = 1) the MIG gap is ``Ī(k, j*)`` (the missing second is 0); with a
single factor (K = 1) likewise for MIG-sup.

**Estimator.** Each code dimension is discretised into ``bins`` (default 20) equal-width bins
between its minimum and maximum over the N rows (a constant dimension falls into one bin and has
zero MI with everything); MI and entropies are the plug-in estimates of the empirical joint
histogram. This is the estimator of disentanglement_lib (Locatello et al. 2019), not the
sampling estimator of Chen et al. (which needs the posterior variances); the plug-in MI is biased
upwards by about ``(bins - 1)(|v_k| - 1) / (2N)`` nats for independent variables. ``H(v_k)`` is the
empirical entropy of the factor in the same rows, so a code that copies a factor scores exactly 1.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 20


def discretize(codes: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Codes float ``[N, J]`` -> bin ids int64 ``[N, J]`` in ``0 .. bins - 1``.

    Equal-width bins between each column's min and max (the max falls into the last bin); a
    constant column is all 0. Raises ValueError for non-finite codes or ``bins < 2``.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or bins < 2:
        raise ValueError(f"codes must be [N, J] and bins >= 2, got {codes.shape} and {bins}")
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    low, high = codes.min(axis=0), codes.max(axis=0)
    width = np.where(high > low, high - low, 1.0)
    ids = np.floor((codes - low) / width * bins).astype(np.int64)
    return np.clip(ids, 0, bins - 1)


def _ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Any integer labels ``[N]`` -> (dense ids 0 .. m-1 ``[N]``, m)."""
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(-1), len(values)


def entropy(labels: np.ndarray) -> float:
    """Plug-in entropy (nats) of integer labels ``[N]``."""
    ids, _ = _ids(np.asarray(labels))
    p = np.bincount(ids) / len(ids)
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two integer label arrays ``[N]`` (>= 0)."""
    (ia, na), (ib, nb) = _ids(np.asarray(a)), _ids(np.asarray(b))
    if na == 1 or nb == 1:
        return 0.0  # a constant carries no information (exactly, not up to rounding)
    joint = np.bincount(ia * nb + ib, minlength=na * nb).reshape(na, nb) / len(ia)
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return max(0.0, float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum()))


def mi_matrix(binned: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``I(v_k; z_j)`` float64 ``[K, J]`` (nats) of binned codes ``[N, J]`` and factors ``[N, K]``."""
    if binned.shape[0] != factors.shape[0]:
        raise ValueError(f"codes have {binned.shape[0]} rows but factors {factors.shape[0]}")
    return np.array([[mutual_information(factors[:, k], binned[:, j]) for j in range(binned.shape[1])] for k in range(factors.shape[1])])


def normalised_mi(codes: np.ndarray, factors: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """``Ī(k, j) = I(v_k; z_j) / H(v_k)`` float64 ``[K, J]`` of codes ``[N, J]`` and factors ``[N, K]``.

    Raises ValueError if a factor takes a single value in these rows (H = 0: nothing to find).
    """
    factors = np.asarray(factors)
    entropies = np.array([entropy(factors[:, k]) for k in range(factors.shape[1])])
    if (entropies <= 0).any():
        constant = np.flatnonzero(entropies <= 0).tolist()
        raise ValueError(f"factor column(s) {constant} take a single value in the {len(factors)} rows: their MI is undefined")
    return mi_matrix(discretize(codes, bins), factors) / entropies[:, None]


def _top_gap(values: np.ndarray) -> np.ndarray:
    """Largest minus second-largest entry of each row of ``[R, C]`` -> ``[R]`` (C = 1: the entry)."""
    ordered = -np.sort(-values, axis=1)
    return ordered[:, 0] - (ordered[:, 1] if values.shape[1] > 1 else 0.0)


def mig_per_factor(nmi: np.ndarray) -> np.ndarray:
    """``Ī(k, j*_k) - Ī(k, j°_k)`` ``[K]`` from normalised MI ``[K, J]``."""
    return _top_gap(nmi)


def mig(nmi: np.ndarray) -> float:
    """MIG (Chen et al. 2018, see the module docstring) from normalised MI ``[K, J]``."""
    return float(mig_per_factor(nmi).mean())


def mig_sup_per_dim(nmi: np.ndarray) -> np.ndarray:
    """``Ī(k*_j, j) - Ī(k°_j, j)`` ``[J]`` from normalised MI ``[K, J]``."""
    return _top_gap(nmi.T)


def mig_sup(nmi: np.ndarray, dims: np.ndarray | None = None) -> float | None:
    """MIG-sup (Li et al. 2020, see the module docstring) from normalised MI ``[K, J]``.

    ``dims``: bool ``[J]`` selecting the dimensions averaged over (e.g. the active ones);
    default all. None when the selection is empty.
    """
    gaps = mig_sup_per_dim(nmi)
    if dims is not None:
        gaps = gaps[np.asarray(dims, dtype=bool)]
    return float(gaps.mean()) if gaps.size else None


def active_dims(codes: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """bool ``[J]``: the variance of each column of codes ``[N, J]`` over the rows exceeds ``threshold``."""
    return np.asarray(codes, dtype=np.float64).var(axis=0) > threshold
