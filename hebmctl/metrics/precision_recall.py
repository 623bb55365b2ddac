"""Improved precision and recall (Kynkaanniemi et al., 2019, "Improved Precision and Recall Metric for Assessing
Generative Models").

Each set of feature vectors defines a manifold estimate: the union of balls centred at its points, each ball's radius
the distance to that point's k-th nearest neighbour in the same set (k = 3 in the paper). Precision is the fraction
of generated points inside the real manifold (fidelity); recall is the fraction of real points inside the generated
manifold (diversity: a sampler that collapses onto a few modes keeps precision and loses recall). The paper computes
them in a pretrained network's feature space (VGG-16 fc2); here the caller passes the Inception pool3 features that FID
already computes (`hebmctl.metrics.fid.InceptionFeatures`), so the numbers are this metric in another feature space,
comparable only with each other.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kth_neighbour_radii", "manifold_coverage", "precision_recall"]

DEFAULT_K = 3
_ROWS_PER_BLOCK = 1024


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances `[Na, Nb]` (float64, clipped at 0 against rounding)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def kth_neighbour_radii(features: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Distance from each point of `features` `[N, D]` to its k-th nearest other point of the set: `[N]`.

    A point's distance to itself (0) is not counted, so duplicates of a point are neighbours at distance 0.
    """
    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < N, got k={k} and N={n}")
    radii = np.empty(n)
    for start in range(0, n, _ROWS_PER_BLOCK):
        block = _squared_distances(features[start : start + _ROWS_PER_BLOCK], features)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = np.inf  # not its own neighbour
        radii[start : start + block.shape[0]] = np.sqrt(np.partition(block, k - 1, axis=1)[:, k - 1])
    return radii


def manifold_coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each query `[M, D]` lies in the union of balls of radii `[N]` centred at `manifold` `[N, D]`: bool `[M]`."""
    manifold, queries = np.asarray(manifold, np.float64), np.asarray(queries, np.float64)
    inside = np.empty(queries.shape[0], dtype=bool)
    for start in range(0, queries.shape[0], _ROWS_PER_BLOCK):
        d = np.sqrt(_squared_distances(queries[start : start + _ROWS_PER_BLOCK], manifold))
        inside[start : start + d.shape[0]] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> dict[str, float]:
    """Improved precision and recall of generated features `fake` `[Nf, D]` against real features `real` `[Nr, D]`.

    precision = mean over fake points of 1[inside the real manifold]; recall = mean over real points of
    1[inside the fake manifold] (Kynkaanniemi et al. 2019, eq. 1-3). Compare values at equal Nr, Nf and k only.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected features [N, D] with the same D, got {real.shape} and {fake.shape}")
    precision = manifold_coverage(real, kth_neighbour_radii(real, k), fake).mean()
    recall = manifold_coverage(fake, kth_neighbour_radii(fake, k), real).mean()
    return {"precision": float(precision), "recall": float(recall), "k": k, "n_real": int(real.shape[0]),
            "n_fake": int(fake.shape[0])}
