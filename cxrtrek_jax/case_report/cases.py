"""Predictions + studies -> the study cases a report shows, in one pass over each.

Selection, in the order of the predictions file (or of `study_ids` when given):
  - `study_ids`: exactly these studies; an id without any prediction is an error;
  - otherwise the first `max_studies` studies of the predictions (all when None).
Only the records of the selected studies are kept in memory; the data is
streamed and only the selected studies are kept. The data is either `Study`s
(their images then resolved under an image root by the report) or the
`StudyRecord`s of an opened data set (`data_pipeline.files.datasets`: a JSON
file or a TFDS dir), which carry each study's images; a case keeps its record.

Context: a predictions file may hold several context modes ("own", "teacher",
"none"; see `cxrtrek_jax.evaluation.scores.predictions`). The report shows one: the
requested one, else "own" when any record has it, else "teacher", else
"none". A selected study without records in that context is listed as a
warning (with the contexts it does have), never dropped silently.

Checks (CaseReportError naming the study and turn):
  - a (study, context, turn_index) given twice;
  - a turn_index beyond the study's turns, or a stage different from the
    data's stage of that turn;
  - a study that appears twice in the data;
  - predictions of studies the data does not hold: an error listing them, or
    with `allow_missing` a warning, and the selected ones are shown without
    images.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

from cxrtrek_jax.case_report.errors import CaseReportError
from cxrtrek_jax.case_report.report_turns import ReportTurn, report_turn
from cxrtrek_jax.contexts import CONTEXT_MODES
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.files.sources import StudyRecord
from data_pipeline.schema.records import Study

__all__ = ["StudyCase", "CaseSelection", "choose_context", "select_cases"]

_MAX_LISTED_IDS = 20


@dataclasses.dataclass(frozen=True)
class StudyCase:
    """One study of the report.

    study: the study from the data (images, ids), None when the data lacks it
        (only with `allow_missing`).
    turns: the turns of the shown context, ordered by turn_index.
    other_contexts: the other context modes the predictions hold for this study.
    record: the study with its images (local paths or stored bytes) when the data came
        as `StudyRecord`s; None when it came as `Study`s (or lacks the study).
    """

    study_id: str
    study: Study | None
    turns: tuple[ReportTurn, ...]
    other_contexts: tuple[str, ...]
    record: StudyRecord | None = None


@dataclasses.dataclass(frozen=True)
class CaseSelection:
    """What the report shows.

    context: the context mode shown; contexts_available: every mode in the
    predictions (CONTEXT_MODES order); warnings: problems that did not stop
    the report, to be listed on the page.
    """

    context: str
    contexts_available: tuple[str, ...]
    cases: tuple[StudyCase, ...]
    warnings: tuple[str, ...]


def choose_context(requested: str | None, available: Iterable[str]) -> str:
    """The context mode to show (rules in the module docstring)."""
    present = [mode for mode in CONTEXT_MODES if mode in set(available)]
    if not present:
        raise CaseReportError("the predictions hold no records")
    if requested is None:
        return present[0]
    if requested not in CONTEXT_MODES:
        raise CaseReportError(f"unknown context {requested!r}; expected one of {', '.join(CONTEXT_MODES)}")
    if requested not in present:
        raise CaseReportError(
            f"no predictions with context {requested!r}; the predictions hold: {', '.join(present)}"
        )
    return requested


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_LISTED_IDS])
    more = len(ids) - _MAX_LISTED_IDS
    return shown + (f" and {more} more" if more > 0 else "")


# (study_id -> context -> turn_index -> record) of the selected studies.
_Kept = dict[str, dict[str, dict[int, PredictionRecord]]]


def _read_predictions(
    predictions: Iterable[PredictionRecord], study_ids: Sequence[str] | None, max_studies: int | None
) -> tuple[_Kept, list[str], set[str]]:
    """(records of the selected studies, every study id in first-seen order, contexts seen)."""
    wanted = set(study_ids) if study_ids is not None else None
    kept: _Kept = {}
    all_ids: dict[str, None] = {}
    contexts: set[str] = set()
    for record in predictions:
        sid = record.study_id
        all_ids.setdefault(sid, None)
        contexts.add(record.context)
        if sid not in kept:
            if wanted is not None and sid not in wanted:
                continue
            if wanted is None and max_studies is not None and len(kept) >= max_studies:
                continue
            kept[sid] = collections.defaultdict(dict)
        turns = kept[sid][record.context]
        if record.turn_index in turns:
            raise CaseReportError(
                f"predictions: study {sid!r} turn {record.turn_index} (context {record.context!r}) "
                "appears more than once"
            )
        turns[record.turn_index] = record
    return kept, list(all_ids), contexts


def _read_studies(studies: Iterable[Study | StudyRecord], keep: set[str]
                  ) -> tuple[dict[str, Study | StudyRecord], set[str]]:
    """(the studies (or records) whose id is in `keep`, every study id of the data)."""
    found: dict[str, Study | StudyRecord] = {}
    all_ids: set[str] = set()
    for item in studies:
        key = item.study.key if isinstance(item, StudyRecord) else item.key
        if key in all_ids:
            raise CaseReportError(f"data: study {key!r} appears more than once")
        all_ids.add(key)
        if key in keep:
            found[key] = item
    return found, all_ids


def _check_against_data(record: PredictionRecord, study: Study) -> None:
    if record.turn_index >= len(study.items):
        raise CaseReportError(
            f"study {record.study_id!r} turn {record.turn_index} (context {record.context!r}): the data "
            f"has only {len(study.items)} turn(s) for this study"
        )
    data_stage = study.items[record.turn_index].stage
    if record.stage != data_stage:
        raise CaseReportError(
            f"study {record.study_id!r} turn {record.turn_index} (context {record.context!r}): stage "
            f"{record.stage} in the predictions, {data_stage} in the data"
        )


def select_cases(
    predictions: Iterable[PredictionRecord],
    studies: Iterable[Study | StudyRecord],
    *,
    context: str | None = None,
    study_ids: Sequence[str] | None = None,
    max_studies: int | None = None,
    allow_missing: bool = False,
) -> CaseSelection:
    """The cases to report (selection, context and checks in the module docstring)."""
    if max_studies is not None and max_studies < 1:
        raise CaseReportError(f"max_studies must be >= 1, got {max_studies}")
    if study_ids is not None:
        study_ids = list(dict.fromkeys(study_ids))
    kept, predicted_ids, contexts = _read_predictions(predictions, study_ids, max_studies)
    shown_context = choose_context(context, contexts)
    if study_ids is not None:
        absent = [sid for sid in study_ids if sid not in kept]
        if absent:
            raise CaseReportError(f"no predictions for the requested stud(ies) {_listed(absent)}")
    found, data_ids = _read_studies(studies, set(kept))
    warnings: list[str] = []
    missing = [sid for sid in predicted_ids if sid not in data_ids]
    if missing:
        message = f"{len(missing)} predicted stud(ies) not in the data: {_listed(missing)}"
        if not allow_missing:
            raise CaseReportError(message + " (allow_missing shows them without images)")
        warnings.append(message + "; shown without images")

    cases: list[StudyCase] = []
    for sid in study_ids if study_ids is not None else kept:
        by_context = kept[sid]
        others = tuple(m for m in CONTEXT_MODES if m in by_context and m != shown_context)
        records = by_context.get(shown_context, {})
        if not records:
            warnings.append(
                f"study {sid!r} has no predictions with context {shown_context!r} "
                f"(it has: {', '.join(others)}); not shown"
            )
            continue
        item = found.get(sid)
        record = item if isinstance(item, StudyRecord) else None
        study = item.study if record is not None else item
        if study is not None:
            for prediction in records.values():
                _check_against_data(prediction, study)
        turns = tuple(report_turn(records[t]) for t in sorted(records))
        cases.append(StudyCase(sid, study, turns, others, record))
    if not cases:
        raise CaseReportError("no study to show: " + "; ".join(warnings))
    available = tuple(m for m in CONTEXT_MODES if m in contexts)
    return CaseSelection(shown_context, available, tuple(cases), tuple(warnings))
