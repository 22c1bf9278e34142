"""A hospital's own export -> `SourceStudy`: JSON Lines, one study a line, images under a root.

    {"patient_id": "P0007", "study_id": "S0003", "study_date": "2021-03-04T09:15:00",
     "report": "FINDINGS: ... IMPRESSION: ...",
     "images": [{"path": "P0007/S0003/frontal.png", "view": "PA"}, {"path": "P0007/S0003/lat.png"}]}

patient_id, study_id: strings (or integers) without '/'. study_date: optional ISO date or date
and time without a UTC offset ("2021-03-04", "2021-03-04T09:15:00", "2021-03-04 09:15"); the
order key is (date, time), the time "" for a bare date (so a bare date sorts before any time of
the same day); without it the study has no order key. report: the whole text, headers included.
images: at least one, each with `path` (relative to the image root) and an optional `view` (PA,
AP, LATERAL, LL, ...); an image's id (what a `--boxes` CSV's `image_id` names) is its path without
the suffix ("P0007/S0003/frontal"), unique under the root where a bare file name need not be. split: optional ("train", "validation"/"valid", "test"), an addition to the
issue's format for exports that carry their own split. Any other key is refused by name, so a
misspelt field is not lost. Blank lines are skipped.

A line is one row: an invalid line raises SourceError naming the file, line and field, or with
`skip_invalid` is dropped and listed. The index keeps each line's byte offset and its checked
images; `load` reads the line again for its report. Lines need not be grouped by patient (`patients_together` is False: the timeline
groups the index).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_index import StudyEntry, StudySource, checked_id
from data_pipeline.construct.source_study import SourceError, SourceImage, SourceStudy, normalise_view
from data_pipeline.schema.splits import canonical_split

__all__ = ["PLAIN_FIELDS", "PlainSource", "plain_order_key", "read_plain_line"]

PLAIN_FIELDS = ("patient_id", "study_id", "study_date", "report", "images", "split")
_REQUIRED = ("patient_id", "study_id", "report", "images")
_IMAGE_FIELDS = ("path", "view")


def plain_order_key(value: object, origin: str) -> tuple[str, str] | None:
    """study_date -> (ISO date, ISO time or ""); None for a missing/empty date."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise SourceError(origin, "study_date", f"must be an ISO date string, got {type(value).__name__}")
    text = value.strip()
    try:
        if len(text) == 10:
            return (datetime.date.fromisoformat(text).isoformat(), "")
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SourceError(origin, "study_date", f"not an ISO date or date and time: {value!r}") from None
    if moment.tzinfo is not None:
        raise SourceError(origin, "study_date", f"{value!r} has a UTC offset; give local times without one")
    return (moment.date().isoformat(), moment.time().isoformat())


def _images(value: object, image_root: ImageRoot, origin: str) -> tuple[SourceImage, ...]:
    if not isinstance(value, list) or not value:
        raise SourceError(origin, "images", "must be a non-empty list of {\"path\", \"view\"} objects")
    images = []
    for index, item in enumerate(value):
        field = f"images[{index}]"
        if not isinstance(item, Mapping):
            raise SourceError(origin, field, f"must be an object with \"path\" and optional \"view\", got {item!r}")
        unknown = sorted(set(item) - set(_IMAGE_FIELDS))
        if unknown:
            raise SourceError(origin, f"{field}.{unknown[0]}", f"unknown field (known: {', '.join(_IMAGE_FIELDS)})")
        view = item.get("view")
        if view is not None and not isinstance(view, str):
            raise SourceError(origin, f"{field}.view", f"must be a string, got {view!r}")
        path = image_root.existing(item.get("path"), origin, f"{field}.path")
        images.append(SourceImage(path=path, view=normalise_view(view, origin, f"{field}.view"),
                                  image_id=str(PurePosixPath(path).with_suffix(""))))
    return tuple(images)


def _split(value: object, origin: str) -> str | None:
    if value is None:
        return None
    name = canonical_split(value)
    if name is None:
        raise SourceError(origin, "split", f"unknown split {value!r} (expected train, validation or test)")
    return name


def _record(line: str, origin: str) -> dict[str, Any]:
    """The line's JSON object, its fields known and the required ones there."""
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise SourceError(origin, "json", f"not a JSON object: {error}") from None
    if not isinstance(record, dict):
        raise SourceError(origin, "json", f"expected an object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(PLAIN_FIELDS))
    if unknown:
        raise SourceError(origin, unknown[0], f"unknown field (known: {', '.join(PLAIN_FIELDS)})")
    for field in _REQUIRED:
        if field not in record:
            raise SourceError(origin, field, "missing")
    return record


def _report(record: Mapping[str, Any], origin: str) -> str:
    report = record["report"]
    if not isinstance(report, str) or not report.strip():
        raise SourceError(origin, "report", "must be the report's non-empty text")
    return report


def read_plain_line(line: str, image_root: ImageRoot, origin: str, source: str = "plain") -> SourceStudy:
    """One JSON line as a study, every field checked (SourceError naming `origin` and the field)."""
    record = _record(line, origin)
    return SourceStudy(
        source=source, patient_id=checked_id(record["patient_id"], origin, "patient_id"),
        study_id=checked_id(record["study_id"], origin, "study_id"), report=_report(record, origin),
        images=_images(record["images"], image_root, origin),
        order_key=plain_order_key(record.get("study_date"), origin), split=_split(record.get("split"), origin),
        origin=origin)


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of each non-blank line."""
    with open(path, "rb") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            if raw.strip():
                yield number, offset, raw
            offset += len(raw)


def _decoded(raw: bytes, number: int, origin: str) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(origin, "encoding", f"not UTF-8 text ({error})") from None


class PlainSource(StudySource):
    """A JSON Lines export `input` (one study a line), images under `image_root`."""

    name = "plain"
    patients_together = False

    def __init__(self, input: str | os.PathLike, image_root: str | os.PathLike, skip_invalid: bool = False):
        super().__init__(skip_invalid)
        self.input = Path(os.path.abspath(input))
        self.image_root = ImageRoot(image_root)

    def entries(self) -> Iterator[StudyEntry]:
        self.invalid.clear()
        seen: dict[tuple[str, str], int] = {}
        for number, offset, raw in _lines(self.input):
            origin = f"{self.input}:{number}"
            try:
                study = read_plain_line(_decoded(raw, number, origin), self.image_root, origin, self.name)
                if study.key in seen:
                    raise SourceError(origin, "study_id", f"study {study.key} is also on line {seen[study.key]}")
            except SourceError as error:
                self.invalid.reject(error)
                continue
            seen[study.key] = number
            yield StudyEntry(patient_id=study.patient_id, study_id=study.study_id, order_key=study.order_key,
                             origin=origin, locator=(offset, number, study.images, study.split))

    def load(self, entry: StudyEntry) -> SourceStudy:
        """The report of `entry` read again from its line (the rest was checked by the index)."""
        offset, number, images, split = entry.locator
        with open(self.input, "rb") as file:
            file.seek(offset)
            record = _record(_decoded(file.readline(), number, entry.origin), entry.origin)
        if (str(record["patient_id"]).strip(), str(record["study_id"]).strip()) != entry.key:
            raise SourceError(entry.origin, "study_id", "the line changed since the index was read")
        return SourceStudy(source=self.name, patient_id=entry.patient_id, study_id=entry.study_id,
                           report=_report(record, entry.origin), images=images, order_key=entry.order_key,
                           split=split, origin=entry.origin)
