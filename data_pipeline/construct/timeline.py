"""A patient's studies in time: each study with its prior (stage 5) and next (stage 6) study.

Rules, for the studies of one patient (`patient_timeline`):
  - Studies with an order key are put in time order: by order key, and for equal keys (a tie:
    two studies of the same date and time, or of the same order number) by study id in natural
    order ("s9" before "s10"). Each is linked to its neighbours in that order: `prior` is the one
    before, `next` the one after (None at either end), so tied studies are linked too, in
    study-id order.
  - A study without an order key (no date given; Open-i, which has none) has no prior and no next,
    and is nobody's prior or next: the dated studies are linked past it.
  - Yielded in that order: the dated studies first, then the undated ones in natural study-id
    order. The same input gives the same timeline, whatever order the studies came in.
  - The same (patient, study id) twice is an error.

Streaming (`study_timeline`): a source whose index yields each patient's studies together
(`patients_together`: MIMIC-CXR, CheXpert Plus, Open-i) is read one patient at a time, and only
that patient's studies are loaded; otherwise (plain JSONL) the index is grouped by patient first
(patients in the order the index first names them), still loading one patient at a time. Memory:
the index at most, plus one patient's studies with their reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from data_pipeline.construct.source_index import StudyEntry, StudySource, natural_key
from data_pipeline.construct.source_study import SourceStudy, TimelineStudy

__all__ = ["patient_timeline", "patient_groups", "study_timeline"]

_Keyed = TypeVar("_Keyed", StudyEntry, SourceStudy)


def patient_timeline(studies: Sequence[SourceStudy]) -> list[TimelineStudy]:
    """One patient's studies in time order, each with its prior and next (rules in the module doc).

    Raises ValueError when the studies belong to several patients or a study id repeats.
    """
    patients = {study.patient_id for study in studies}
    if len(patients) > 1:
        raise ValueError(f"patient_timeline takes one patient's studies, got patients {sorted(patients)}")
    seen: dict[str, str] = {}
    for study in studies:
        if study.study_id in seen:
            raise ValueError(f"study {study.key} appears twice: {seen[study.study_id]} and {study.origin}")
        seen[study.study_id] = study.origin
    dated = sorted((s for s in studies if s.order_key is not None),
                   key=lambda s: (s.order_key, natural_key(s.study_id)))
    undated = sorted((s for s in studies if s.order_key is None), key=lambda s: natural_key(s.study_id))
    linked = [TimelineStudy(study, prior=dated[i - 1] if i > 0 else None,
                            next=dated[i + 1] if i + 1 < len(dated) else None) for i, study in enumerate(dated)]
    return linked + [TimelineStudy(study) for study in undated]


def patient_groups(items: Iterable[_Keyed], together: bool) -> Iterator[list[_Keyed]]:
    """`items` (entries or studies) as one list per patient.

    together: the items come patient by patient; each list is yielded as soon as the next
        patient starts (one patient held). A patient that comes back after another one is an
        error (ValueError naming it): the source did not keep its patients together.
    otherwise: every item is read first and grouped (the whole index held), patients in the
        order they first appear.
    """
    if not together:
        groups: dict[str, list[_Keyed]] = {}
        for item in items:
            groups.setdefault(item.patient_id, []).append(item)
        yield from groups.values()
        return
    done: set[str] = set()
    current: list[_Keyed] = []
    for item in items:
        if current and item.patient_id != current[0].patient_id:
            done.add(current[0].patient_id)
            yield current
            current = []
        if item.patient_id in done:
            raise ValueError(f"patient {item.patient_id!r} comes back at {item.origin} after other patients: "
                             "the source does not keep each patient's studies together")
        current.append(item)
    if current:
        yield current


def study_timeline(source: StudySource) -> Iterator[TimelineStudy]:
    """Every study of `source` with its prior and next, loading one patient's studies at a time."""
    for entries in patient_groups(source.entries(), source.patients_together):
        yield from patient_timeline([source.load(entry) for entry in entries])
