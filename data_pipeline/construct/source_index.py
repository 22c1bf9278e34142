"""What every source reader shares: an index of studies, and the study text read one at a time.

A reader is a `StudySource`. `entries()` is its index: one light `StudyEntry` per study (ids,
order key, where to find the rest; never the report text), read in one pass over the source's
files with every row checked. `load(entry)` reads that one study in full (`SourceStudy`, report
included). `studies()` streams the full studies in index order. So memory is bounded by the
index, not by the report texts, and a process that holds only entries can load any study.

`patients_together` says whether `entries()` yields each patient's studies one after another
(the timeline then holds one patient at a time); otherwise the timeline groups the index first.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Hashable, Iterator

from data_pipeline.construct.invalid_rows import InvalidRows, SkippedRow
from data_pipeline.construct.source_study import SourceError, SourceStudy

__all__ = ["StudyEntry", "StudySource", "natural_key", "checked_id"]


@dataclasses.dataclass(frozen=True)
class StudyEntry:
    """One study in a source's index, without its report text.

    patient_id / study_id / order_key / origin: as the study's `SourceStudy` will have them.
    locator: where `load` finds the study (reader-specific, hashable and picklable: paths,
        byte offsets, row numbers, the images already checked).
    """

    patient_id: str
    study_id: str
    order_key: tuple[str | int, ...] | None
    origin: str
    locator: tuple[Hashable, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.patient_id, self.study_id)


class StudySource(abc.ABC):
    """A report source: an index of its studies (`entries`) and each study in full (`load`).

    skip_invalid: drop invalid rows and list them in `skipped` instead of raising `SourceError`.
    """

    name: str
    patients_together: bool

    def __init__(self, skip_invalid: bool = False):
        self.invalid = InvalidRows(skip_invalid)

    @abc.abstractmethod
    def entries(self) -> Iterator[StudyEntry]:
        """The index: one entry per valid study, every row checked (rows dropped are in `skipped`)."""

    @abc.abstractmethod
    def load(self, entry: StudyEntry) -> SourceStudy:
        """The study of `entry` in full, its report read from the source's files."""

    def studies(self) -> Iterator[SourceStudy]:
        """Every valid study in full, in index order, one at a time."""
        for entry in self.entries():
            yield self.load(entry)

    @property
    def skipped(self) -> tuple[SkippedRow, ...]:
        """The rows dropped by the latest pass over the source (always empty unless skip_invalid)."""
        return self.invalid.rows


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders digit runs by value: "study2" < "study10", "CXR9" < "CXR10"."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def checked_id(value: object, origin: str, field: str) -> str:
    """A patient or study id as a non-empty string without '/' (ints are accepted and written out).

    Raises SourceError for anything else: a '/' would make the study key "source/pat_id/study_id"
    ambiguous.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SourceError(origin, field, f"must be a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise SourceError(origin, field, "empty")
    if "/" in text:
        raise SourceError(origin, field, f"{text!r} contains '/', which the study key source/pat_id/study_id uses")
    return text
