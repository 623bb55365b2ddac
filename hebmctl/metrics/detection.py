"""Detection metrics for OOD and anomaly scores: AUROC, AUPRC, FPR at 80% TPR, and their curves.

Convention: a higher score means "more likely positive" (out-of-distribution / anomalous); the
positive class is labelled 1. The areas come from scikit-learn (`roc_auc_score`,
`average_precision_score`: AUPRC as average precision, the step-wise area without interpolation).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

FPR_AT_TPR = 0.8


def _labels_scores(scores_negative: np.ndarray, scores_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated labels `[N]` (0 then 1) and scores `[N]`; both sets non-empty and finite."""
    neg, pos = np.asarray(scores_negative, np.float64).ravel(), np.asarray(scores_positive, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"both classes need scores: {neg.size} negatives, {pos.size} positives")
    scores = np.concatenate([neg, pos])
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    return np.concatenate([np.zeros(neg.size), np.ones(pos.size)]), scores


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float = FPR_AT_TPR) -> float:
    """Smallest false-positive rate among thresholds whose true-positive rate is >= `tpr_level`."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def detection_metrics(scores_negative: np.ndarray, scores_positive: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC (positives = the second set) and FPR at 80% TPR of scores `[N0]`, `[N1]`."""
    labels, scores = _labels_scores(scores_negative, scores_positive)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "fpr80": fpr_at_tpr(labels, scores),
        "positive_fraction": float(labels.mean()),
    }


def roc_points(scores_negative: np.ndarray, scores_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of the ROC curve."""
    fpr, tpr, _ = roc_curve(*_labels_scores(scores_negative, scores_positive))
    return fpr, tpr


def pr_points(scores_negative: np.ndarray, scores_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of the precision-recall curve."""
    precision, recall, _ = precision_recall_curve(*_labels_scores(scores_negative, scores_positive))
    return recall, precision
