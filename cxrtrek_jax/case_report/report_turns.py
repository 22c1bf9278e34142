"""One predicted turn as the case report shows it: its correctness mark and its boxes.

Correctness (closed questions only: yes/no, single- and multi-choice):
  1. the scorer's per-turn ``scores["correct"]`` when present (a boolean, or
     the number 0 or 1);
  2. otherwise `answer_parsing.judge_closed_answer`, the rule scoring uses: the
     turn is correct when prediction and reference parse to the same value,
     incorrect when the prediction does not parse or differs, and unscored
     when the reference itself does not parse (a data problem, shown as such).
Open questions (captioning, detection) get no mark.

Boxes: a detection turn (qtype ``detection``, or a reference carrying
``<|box|>`` markup) has its prediction and reference parsed with
`data_pipeline.schema.boxes.parse_boxes`; a parse failure is kept as a message for
the page, never raised (a model may well write broken markup).
"""

from __future__ import annotations

import dataclasses

from cxrtrek_jax.case_report.errors import CaseReportError
from cxrtrek_jax.evaluation.metrics.answer_parsing import judge_closed_answer
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.schema.boxes import Box, BoxParseError, has_box_markup, parse_boxes
from data_pipeline.schema.stages import parse_qtype

__all__ = [
    "Verdict",
    "ParsedBoxes",
    "ReportTurn",
    "judge_turn",
    "is_detection_turn",
    "parse_turn_boxes",
    "report_turn",
]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The correctness mark of one turn.

    correct: True/False for a scored closed question, None otherwise.
    basis: "scores" (from the record's scores), "parsed" (answer parsing),
        "unscorable" (closed, but the reference does not parse) or "open".
    """

    correct: bool | None
    basis: str

    @property
    def is_closed(self) -> bool:
        return self.basis != "open"


@dataclasses.dataclass(frozen=True)
class ParsedBoxes:
    """Boxes of one answer (0-100 image scale); error is "" or why parsing failed."""

    boxes: tuple[Box, ...] = ()
    error: str = ""


@dataclasses.dataclass(frozen=True)
class ReportTurn:
    """A prediction record with its verdict and, for detection turns, its boxes.

    model_boxes / reference_boxes: None for a turn that is not a detection turn.
    """

    record: PredictionRecord
    verdict: Verdict
    model_boxes: ParsedBoxes | None
    reference_boxes: ParsedBoxes | None


def _scored_correct(record: PredictionRecord) -> bool | None:
    """`scores["correct"]` as a bool, None when absent; CaseReportError when malformed."""
    if "correct" not in record.scores:
        return None
    value = record.scores["correct"]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise CaseReportError(
        f"study {record.study_id!r} turn {record.turn_index}: scores['correct'] must be a "
        f"boolean or 0/1, got {value!r}"
    )


def judge_turn(record: PredictionRecord) -> Verdict:
    """The correctness mark of a turn (rules in the module docstring)."""
    qtype = parse_qtype(record.qtype)
    if not qtype.is_closed:
        return Verdict(None, "open")
    scored = _scored_correct(record)
    if scored is not None:
        return Verdict(scored, "scores")
    judged = judge_closed_answer(record.prediction, record.reference, record.question, qtype)
    return Verdict(None, "unscorable") if judged.correct is None else Verdict(judged.correct, "parsed")


def _parse(text: str) -> ParsedBoxes:
    try:
        boxes = parse_boxes(text)
    except BoxParseError as err:
        return ParsedBoxes((), str(err))
    return ParsedBoxes(boxes, "" if boxes else "no <|box|> in the answer")


def is_detection_turn(record: PredictionRecord) -> bool:
    return parse_qtype(record.qtype).kind == "detection" or has_box_markup(record.reference)


def parse_turn_boxes(record: PredictionRecord) -> tuple[ParsedBoxes | None, ParsedBoxes | None]:
    """(model boxes, reference boxes) of a detection turn; (None, None) for other turns."""
    if not is_detection_turn(record):
        return None, None
    return _parse(record.prediction), _parse(record.reference)


def report_turn(record: PredictionRecord) -> ReportTurn:
    """The verdict and boxes of one record; CaseReportError for a malformed score."""
    model_boxes, reference_boxes = parse_turn_boxes(record)
    return ReportTurn(record, judge_turn(record), model_boxes, reference_boxes)
