"""The source side's contract: one study as a report source gives it, before any QA is made.

Every reader (MIMIC-CXR, CheXpert Plus, Open-i, plain JSONL) yields `SourceStudy` records; the
timeline links each to its patient's prior and next study (`TimelineStudy`). Nothing here reads
a file.
"""

from __future__ import annotations

import dataclasses

__all__ = ["VIEWS", "SourceError", "SourceImage", "SourceStudy", "TimelineStudy", "normalise_view"]

# The normalised view names (DICOM ViewPosition spellings); anything else is refused by name.
VIEWS = ("PA", "AP", "LATERAL", "LL", "RL", "AP AXIAL", "PA LLD", "AP LLD", "PA RLD", "AP RLD", "LAO", "RAO",
         "LPO", "SWIMMERS", "XTABLE LATERAL")
_VIEW_ALIASES = {
    "POSTEROANTERIOR": "PA", "POSTERO-ANTERIOR": "PA", "ANTEROPOSTERIOR": "AP", "ANTERO-POSTERIOR": "AP",
    "LAT": "LATERAL", "LEFT LATERAL": "LL", "RIGHT LATERAL": "RL",
}
FRONTAL_VIEWS = ("PA", "AP", "AP AXIAL", "PA LLD", "AP LLD", "PA RLD", "AP RLD")


class SourceError(ValueError):
    """A source row that cannot be read: the message names the file, the row and the field."""

    def __init__(self, origin: str, field: str, reason: str):
        self.origin, self.field, self.reason = origin, field, reason
        super().__init__(f"{origin}: field {field!r}: {reason}")


def normalise_view(value: str | None, origin: str = "", field: str = "view") -> str | None:
    """A view spelling -> one of `VIEWS` (None for empty/None); SourceError for an unknown one."""
    if value is None or not str(value).strip():
        return None
    name = " ".join(str(value).strip().upper().replace("_", " ").split())
    name = _VIEW_ALIASES.get(name, name)
    if name not in VIEWS:
        raise SourceError(origin, field, f"unknown view {value!r} (known: {', '.join(VIEWS)})")
    return name


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One radiograph of a study.

    path: POSIX path relative to the source's image root (never absolute, never with '..').
    view: one of `VIEWS`, or None when the source does not say.
    image_id: the source's own id of the image (MIMIC `dicom_id`, Open-i image id, CheXpert path
        stem), used to attach boxes (`--boxes`); "" when it has none.
    """

    path: str
    view: str | None = None
    image_id: str = ""

    @property
    def is_frontal(self) -> bool:
        return self.view in FRONTAL_VIEWS


@dataclasses.dataclass(frozen=True)
class SourceStudy:
    """One study: its report's free text and its images, as the source gives them.

    source: the reader's name ("mimic-cxr", "chexpert-plus", "openi", "plain").
    patient_id / study_id: the source's own ids (kept verbatim as `pat_id` / `study_id`).
    report: the whole report text, headers included.
    images: the study's radiographs, in the source's order.
    order_key: sorts the patient's studies in time (ISO date and time strings, or the source's own
        order number); None when the source gives nothing to order by.
    split: the source's official split ("train", "validation", "test") or None.
    origin: where the study was read ("file:row"), for messages.
    """

    source: str
    patient_id: str
    study_id: str
    report: str
    images: tuple[SourceImage, ...]
    order_key: tuple[str | int, ...] | None = None
    split: str | None = None
    origin: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.patient_id, self.study_id)


@dataclasses.dataclass(frozen=True)
class TimelineStudy:
    """A study with its patient's previous study (`prior`, feeds stage 5) and next study (`next`,
    feeds stage 6) in time; None where there is none or the order is unknown."""

    study: SourceStudy
    prior: SourceStudy | None = None
    next: SourceStudy | None = None
