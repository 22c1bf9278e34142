"""Detection per finding: which finding a detection turn boxes, and mean IoU per finding.

`detection_finding(reference)` is the finding kind (`data_pipeline.schema.findings.FINDING_KINDS`)
that the reference answer's box labels name, read by the report labeller
(`chexpert_labeller.default_labeller`: a positive or uncertain mention of the kind's CheXpert
observation, `CHEXPERT_LABELS`): "enlarged cardiac silhouette" and "heart enlarged in mediastinum"
are cardiomegaly, "endotracheal tube" and "central venous catheter" support devices, "left middle
zone nodule" a nodule. None (the row `OTHER`) when the labels name no finding (the released
sample's anatomy: "left hilar structures", "svc", "cardiac silhouette"; "atelectasis in left lower
lung zone", not a finding kind) or several (one answer boxing every finding). The labeller's
vocabulary decides: the sample's one "wire in trachea" names no finding.

The labels decide, not the question: every demo phantom label names its finding (the question
names it too), and in the released CXRTrek sample (100 studies, 469 detection turns) labels and
question agree wherever both name a finding (6 turns), while the 4 questions that name a finding
their labels do not box it: a clinical preamble ("Indication: New endotracheal tube. ... Locate
... Of phrase: Descending aorta") or a related finding ("atelectasis associated with the moderate
left pleural effusion" boxing the atelectasis).

`detection_by_finding(own, others)` gives one row per finding kind (and `OTHER`): the turns, mean
IoU (IoU summed over box pairs over pairs, as metrics.json's `mean_iou`) of the `own` records and
of each other side on the same turns, and the paired own - other difference with its study
bootstrap interval (`paired_differences`). Records are scored here with `score_detection`, so a
baseline's unscored predictions file serves as well as a scored one; a turn whose reference has
no readable box is left out, as the scorer leaves it out, and counted.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping

from cxrtrek_jax.evaluation.metrics.detection_metrics import score_detection
from cxrtrek_jax.evaluation.scores.paired_differences import paired_difference
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.reports.chexpert_labeller import NEGATIVE, default_labeller
from data_pipeline.schema.boxes import BoxParseError, parse_boxes
from data_pipeline.schema.findings import CHEXPERT_LABELS, FINDING_KINDS

__all__ = ["OTHER", "FINDING_ROWS", "detection_finding", "detection_by_finding"]

OTHER = "other"
FINDING_ROWS = (*FINDING_KINDS, OTHER)
_KIND_OF_OBSERVATION = {observation: kind for kind, observation in CHEXPERT_LABELS.items()}
_DETECTION = "detection"


def detection_finding(reference: str) -> str | None:
    """The finding kind the reference's box labels name (module docstring); None for none or
    several. BoxParseError when the reference's markup is malformed."""
    return _labels_finding(tuple(box.label for box in parse_boxes(reference)))


@functools.lru_cache(maxsize=1 << 14)  # labels repeat across turns: each set read once per process
def _labels_finding(labels: tuple[str, ...]) -> str | None:
    named = set()
    for label in labels:
        found = default_labeller().label(label).labels
        named |= {_KIND_OF_OBSERVATION[o] for o, value in found.items()
                  if o in _KIND_OF_OBSERVATION and value is not None and value != NEGATIVE}
    return named.pop() if len(named) == 1 else None


def _scored(records: Iterable[PredictionRecord], unusable: set) -> list[PredictionRecord]:
    """The detection records with `score_detection`'s mean_iou and pairs as scores; the turns
    whose reference has no readable box go to `unusable` instead."""
    out = []
    for record in records:
        if record.qtype != _DETECTION:
            continue
        try:
            score = score_detection(record.reference, record.prediction)
        except BoxParseError:
            unusable.add((record.study_id, record.turn_index))
            continue
        out.append(dataclasses.replace(record, scores={"mean_iou": score.mean_iou, "pairs": score.num_pairs}))
    return out


def detection_by_finding(own: Iterable[PredictionRecord], others: Mapping[str, Iterable[PredictionRecord]], *,
                         resamples: int = 1000, confidence: float = 0.95) -> tuple[list[dict], int]:
    """Rows per `FINDING_ROWS` entry: {"finding", "turns", "own", and per other side name: its mean
    IoU, "own_minus_<name>" and "own_minus_<name>_ci"} (None where a side has no such turn), and
    the number of turns left out for an unreadable reference. Only detection records count."""
    unusable: set = set()
    mine = _scored(own, unusable)
    theirs = {name: _scored(records, unusable) for name, records in others.items()}
    finding = {(r.study_id, r.turn_index): detection_finding(r.reference) or OTHER for r in mine}
    rows = []
    for kind in FINDING_ROWS:
        def select(record, kind=kind):
            return finding.get((record.study_id, record.turn_index)) == kind

        alone = paired_difference(mine, mine, "mean_iou", select, resamples=0)
        row = {"finding": kind, "turns": alone.turns, "own": alone.a}
        for name, records in theirs.items():
            paired = paired_difference(mine, records, "mean_iou", select, resamples=resamples,
                                       confidence=confidence)
            row |= {name: paired.b, f"own_minus_{name}": paired.difference, f"own_minus_{name}_ci": paired.ci}
        rows.append(row)
    return rows, len(unusable)
