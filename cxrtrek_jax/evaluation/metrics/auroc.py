"""Area under the ROC curve and F1 of binary labels, with optional item weights (the bootstrap's).

AUROC is the Mann-Whitney statistic: the probability that a positive item scores above a
negative one, ties counting one half, each pair weighted by the product of its items' weights:

    AUROC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (sum_pos w)(sum_neg w)

Unweighted it equals scikit-learn's `roc_auc_score` (the trapezoid under the ROC curve). It is
undefined (NaN) when the items hold no positive or no negative.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "binary_f1"]


def _weights(size: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(size, np.float64)
    weights = np.asarray(weights, np.float64)
    if weights.shape != (size,):
        raise ValueError(f"weights must have shape ({size},), got {weights.shape}")
    return weights


def auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """AUROC of float scores[N] against bool labels[N] (module docstring); NaN without both classes."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be vectors of one length, got {scores.shape} and {labels.shape}")
    w = _weights(len(scores), weights)
    _, level = np.unique(scores, return_inverse=True)  # tied scores share a level, levels ascend
    positive = np.bincount(level, weights=w * labels)
    negative = np.bincount(level, weights=w * ~labels)
    below = np.cumsum(negative) - negative
    total = positive.sum() * negative.sum()
    if total <= 0:
        return float("nan")
    return float(np.sum(positive * (below + 0.5 * negative)) / total)


def binary_f1(predicted: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """F1 of bool predicted[N] against bool labels[N]: 2 tp / (2 tp + fp + fn); NaN when all are 0."""
    predicted = np.asarray(predicted, bool)
    labels = np.asarray(labels, bool)
    w = _weights(len(labels), weights)
    tp, fp, fn = (float(np.sum(w * m)) for m in (predicted & labels, predicted & ~labels, ~predicted & labels))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else float("nan")
