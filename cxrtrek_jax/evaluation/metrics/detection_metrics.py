"""Scoring detection answers (`<|ref|> label <|/ref|> <|box|>(x1, y1), (x2, y2)<|/box|>`).

Predicted boxes are matched one-to-one to reference boxes: first among boxes
with the same (normalised) label, then, for what is left, regardless of
label; each step greedily takes the pair with the highest IoU. Every
reference box and every predicted box ends up in exactly one "pair": a
matched pair carries its IoU, an unmatched box (missed or spurious) an IoU of
0. Mean IoU and accuracy at IoU >= threshold are averages over these pairs.
A prediction with malformed markup or without any box is "unparseable": all
reference boxes count as missed and the item is counted separately.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from data_pipeline.schema.boxes import Box, BoxParseError, box_iou, parse_boxes

__all__ = ["IOU_THRESHOLD", "BoxPair", "DetectionScore", "label_class", "match_boxes", "score_detection"]

IOU_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class BoxPair:
    """A reference box index and a predicted box index (either may be None) with their IoU."""

    reference: int | None
    predicted: int | None
    iou: float


@dataclasses.dataclass(frozen=True)
class DetectionScore:
    """Per-item detection statistics.

    pairs: matched pairs plus unmatched reference and predicted boxes.
    iou_sum: sum of IoUs over pairs (unmatched pairs contribute 0).
    hits: number of pairs with IoU >= the threshold.
    unparseable: the prediction had no readable boxes.
    """

    pairs: tuple[BoxPair, ...]
    hits: int
    unparseable: bool

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def iou_sum(self) -> float:
        return sum(p.iou for p in self.pairs)

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.num_pairs if self.pairs else 0.0


def label_class(label: str) -> str:
    """The class a box label names: its lower-cased words ("Right  Pleural-Effusion" -> "right pleural effusion")."""
    return " ".join(re.findall(r"[a-z0-9]+", label.lower()))


def _greedy(candidates: list[tuple[float, int, int]], used_ref: set[int], used_pred: set[int]) -> list[BoxPair]:
    pairs = []
    for iou, r, p in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
        if r in used_ref or p in used_pred:
            continue
        used_ref.add(r)
        used_pred.add(p)
        pairs.append(BoxPair(r, p, iou))
    return pairs


def match_boxes(reference: Sequence[Box], predicted: Sequence[Box]) -> tuple[BoxPair, ...]:
    """One-to-one matching, by label first and then by IoU (see the module docstring).

    Returns matched pairs, then missed reference boxes, then spurious predictions.
    """
    used_ref: set[int] = set()
    used_pred: set[int] = set()
    same_label = [
        (box_iou(rb, pb), r, p)
        for r, rb in enumerate(reference)
        for p, pb in enumerate(predicted)
        if label_class(rb.label) == label_class(pb.label)
    ]
    pairs = _greedy(same_label, used_ref, used_pred)
    leftovers = [
        (box_iou(rb, pb), r, p)
        for r, rb in enumerate(reference)
        for p, pb in enumerate(predicted)
        if r not in used_ref and p not in used_pred and box_iou(rb, pb) > 0.0
    ]
    pairs += _greedy(leftovers, used_ref, used_pred)
    pairs += [BoxPair(r, None, 0.0) for r in range(len(reference)) if r not in used_ref]
    pairs += [BoxPair(None, p, 0.0) for p in range(len(predicted)) if p not in used_pred]
    return tuple(pairs)


def score_detection(reference: str, prediction: str, iou_threshold: float = IOU_THRESHOLD) -> DetectionScore:
    """Score one detection answer against its reference answer.

    Raises BoxParseError when the *reference* is malformed or has no box
    (a data problem, not a model error).
    """
    reference_boxes = parse_boxes(reference)
    if not reference_boxes:
        raise BoxParseError("reference answer has no <|box|>")
    try:
        predicted_boxes = parse_boxes(prediction)
    except BoxParseError:
        predicted_boxes = ()
    unparseable = not predicted_boxes
    pairs = match_boxes(reference_boxes, predicted_boxes)
    hits = sum(1 for p in pairs if p.iou >= iou_threshold)
    return DetectionScore(pairs=pairs, hits=hits, unparseable=unparseable)
