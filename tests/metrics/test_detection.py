"""AUROC / AUPRC / FPR@80%TPR against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from hebmctl.metrics.detection import detection_metrics, fpr_at_tpr, pr_points, roc_points


def test_hand_computed_case():
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-).
    # AUROC: of the 4 (pos, neg) pairs, 3 are ordered correctly -> 0.75.
    # AP: precision 1/1 at recall 1/2, 2/3 at recall 1 -> 0.5 * 1 + 0.5 * 2/3 = 5/6.
    # TPR >= 0.8 needs both positives, threshold 0.35, which also passes the negative 0.4 -> FPR 1/2.
    m = detection_metrics(np.array([0.1, 0.4]), np.array([0.35, 0.8]))
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auprc"] == pytest.approx(5 / 6)
    assert m["fpr80"] == pytest.approx(0.5)
    assert m["positive_fraction"] == pytest.approx(0.5)


def test_perfect_reversed_and_tied_scores():
    neg, pos = np.arange(10.0), np.arange(10.0) + 100
    perfect = detection_metrics(neg, pos)
    assert (perfect["auroc"], perfect["fpr80"]) == (1.0, 0.0) and perfect["auprc"] == pytest.approx(1.0)
    reversed_ = detection_metrics(pos, neg)
    assert reversed_["auroc"] == 0.0 and reversed_["fpr80"] == 1.0
    # All 10 negatives rank first: the k-th positive is found at rank 10 + k, precision k / (10 + k).
    assert reversed_["auprc"] == pytest.approx(np.mean([k / (10 + k) for k in range(1, 11)]))
    tied = detection_metrics(np.ones(5), np.ones(5))
    assert tied["auroc"] == 0.5 and tied["auprc"] == 0.5


def test_fpr_at_tpr_five_positives():
    # Positives 5..9 above all negatives except one negative at 7.5: TPR 0.8 needs 4 of 5 positives
    # (threshold 6) -> the negative 7.5 is above it -> FPR = 1/5.
    labels = np.array([0] * 5 + [1] * 5)
    scores = np.array([0, 1, 2, 3, 7.5, 5, 6, 7, 8, 9])
    assert fpr_at_tpr(labels, scores) == pytest.approx(0.2)


def test_curves_span_the_unit_square():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 200), rng.normal(1, 1, 100)
    fpr, tpr = roc_points(neg, pos)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    recall, precision = pr_points(neg, pos)
    assert recall.max() == 1 and precision.min() >= 0 and precision.max() <= 1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="both classes"):
        detection_metrics(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="not finite"):
        detection_metrics(np.array([np.nan, 1.0]), np.array([1.0]))
