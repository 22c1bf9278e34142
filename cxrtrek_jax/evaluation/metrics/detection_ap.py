"""Average precision of detections per class at an IoU threshold, the PASCAL VOC way (mAP).

Per image and class, the predicted boxes are taken in descending score order (ties in the order
given) and each is matched to the not yet matched reference box it overlaps most (`box_iou`, the
one IoU of `schema.boxes`, as `detection_metrics` uses); it is a true positive when that IoU is
>= the threshold, else a false positive (`match_detections`). Over all images, the predictions of
a class are ranked by score; a block of tied scores enters the ranking at once. Each block end is
a point (recall = TP / references, precision = TP / (TP + FP)); AP is the all-point interpolated
area: the sum over points of the recall step times the highest precision at that recall or beyond
(VOC 2010+, COCO without its 101-point sampling). A class without reference boxes has no AP (NaN)
and mAP averages the classes that have one.

A generative model gives no confidence per box: every box then has the same score, the ranking is
one block, and AP = recall x precision at that single point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipeline.schema.boxes import Box, box_iou

__all__ = ["match_detections", "average_precision", "mean_average_precision"]


def match_detections(reference: Sequence[Box], predicted: Sequence[Box], scores: Sequence[float],
                     iou_threshold: float) -> np.ndarray:
    """bool[len(predicted)]: which predictions are true positives on one image (module docstring)."""
    if len(scores) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted boxes but {len(scores)} scores")
    order = sorted(range(len(predicted)), key=lambda i: -scores[i])  # stable: ties keep their order
    used: set[int] = set()
    hits = np.zeros(len(predicted), bool)
    for p in order:
        best, best_iou = None, -1.0
        for r, box in enumerate(reference):
            if r in used:
                continue
            iou = box_iou(box, predicted[p])
            if iou > best_iou:
                best, best_iou = r, iou
        if best is not None and best_iou >= iou_threshold:
            used.add(best)
            hits[p] = True
    return hits


def average_precision(scores: np.ndarray, true_positive: np.ndarray, num_references: float,
                      weights: np.ndarray | None = None) -> float:
    """All-point interpolated AP of a class's predictions over all images (module docstring).

    scores float[P], true_positive bool[P]; num_references: the reference boxes of the class
    (weighted like the predictions when `weights` float[P] is given). NaN when num_references is 0."""
    scores = np.asarray(scores, np.float64)
    hits = np.asarray(true_positive, bool)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    if num_references <= 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    levels, block = np.unique(-scores, return_inverse=True)  # blocks in descending score
    tp = np.cumsum(np.bincount(block, weights=w * hits, minlength=len(levels)))
    fp = np.cumsum(np.bincount(block, weights=w * ~hits, minlength=len(levels)))
    recall = tp / num_references
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * best_after))


def mean_average_precision(per_class: dict[str, float]) -> float:
    """The mean of the defined (non-NaN) per-class APs; NaN when none is defined."""
    defined = [v for v in per_class.values() if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
