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

`detections_by_class` gathers a set of items (images, turns) into per-class `ClassDetections` and
`weighted_ap` scores one class under bootstrap weights per item; the external sets' VinDr scoring
and the CXRTrek detection turns both go through them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.schema.boxes import Box, box_iou

# The IoU thresholds mAP is reported at: 0.4 (VinDr-CXR's protocol) and 0.5 (PASCAL VOC).
DETECTION_IOUS = (0.4, 0.5)

__all__ = ["DETECTION_IOUS", "match_detections", "average_precision", "mean_average_precision", "ClassDetections",
           "detections_by_class", "weighted_ap"]


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


@dataclasses.dataclass(frozen=True)
class ClassDetections:
    """One class's predicted boxes over I items, every box scored alike.

    owner int[P]: the item of each predicted box; hits bool[P]: true positives (`match_detections`);
    references float[I]: the class's reference boxes in each item.
    """

    owner: np.ndarray
    hits: np.ndarray
    references: np.ndarray


def detections_by_class(items: Sequence[Mapping[str, tuple[Sequence[Box], Sequence[Box]]]],
                        iou_threshold: float) -> dict[str, ClassDetections]:
    """items[i]: class -> (reference boxes, predicted boxes) of item i, matched within the item at
    `iou_threshold`; every class named by any item, in sorted order."""
    classes = sorted({name for item in items for name in item})
    out = {}
    for name in classes:
        owner, hits, references = [], [], np.zeros(len(items))
        for index, item in enumerate(items):
            if name not in item:
                continue
            reference, predicted = item[name]
            references[index] = len(reference)
            flags = match_detections(reference, predicted, [1.0] * len(predicted), iou_threshold)
            owner += [index] * len(flags)
            hits += flags.tolist()
        out[name] = ClassDetections(np.array(owner, int), np.array(hits, bool), references)
    return out


def weighted_ap(detections: ClassDetections, weights: np.ndarray | None = None) -> float:
    """AP of one class with each item counted `weights[i]` times (float[I]; None: once); NaN
    when the weighted reference count is 0."""
    if weights is None:
        return average_precision(np.ones(len(detections.owner)), detections.hits, detections.references.sum())
    return average_precision(np.ones(len(detections.owner)), detections.hits,
                             float(weights @ detections.references), weights[detections.owner])
