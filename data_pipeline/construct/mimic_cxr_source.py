"""MIMIC-CXR (PhysioNet) -> `SourceStudy`: MIMIC-CXR-JPG images and tables, MIMIC-CXR reports.

The published layout, under `root` (MIMIC-CXR-JPG 2.0.0) and `reports_root` (the MIMIC-CXR
reports package, `mimic-cxr-reports.zip` unpacked; the same folder as `root` by default):

    root/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id,
        PerformedProcedureStepDescription, ViewPosition, Rows, Columns, StudyDate (21800506),
        StudyTime (213014.531, leading zeros dropped: 80556.875 is 08:05:56.875), ...
    root/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
        (train / validate / test; optional: without it studies have no split)
    root/files/p10/p10000032/s50414267/<dicom_id>.jpg   (or .dcm, MIMIC-CXR's DICOM layout)
    reports_root/files/p10/p10000032/s50414267.txt      the free-text report

One metadata row is one image. A study is the rows of one study_id: its patient is their
subject_id, its order key (ISO StudyDate, StudyTime) of its rows, its view per image
ViewPosition (empty: unknown), its split the official one ("validate" -> "validation"). Ids are
kept as the tables write them ("10000032", "50414267"). With `skip_invalid`, an invalid row drops
that image only (a study whose rows are all invalid is not read), and a study without its report
file is dropped as a whole; each drop is listed in `skipped`.

The index (every study's ids, order and images) is held in memory: about 230,000 studies for
the whole of MIMIC-CXR. Reports are read one study at a time, by `load`. Patients come in
subject_id order, each patient's studies together.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.construct.csv_records import CsvRow, iter_csv_rows
from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_index import StudyEntry, StudySource, natural_key
from data_pipeline.construct.source_study import SourceError, SourceImage, SourceStudy, normalise_view
from data_pipeline.schema.splits import TEST, TRAIN, VALIDATION

__all__ = ["METADATA_CSV", "SPLIT_CSV", "MimicCxrSource", "mimic_order_key"]

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
_SPLIT_COLUMNS = ("dicom_id", "split")
_SPLITS = {"train": TRAIN, "validate": VALIDATION, "test": TEST}
_DICOM_ID = re.compile(r"[0-9A-Za-z.-]+")


def mimic_order_key(date: str, time: str, origin: str) -> tuple[str, str]:
    """(StudyDate, StudyTime) -> ("YYYY-MM-DD", "HH:MM:SS[.fff]"); SourceError naming the bad field."""
    date = date.strip()
    if not re.fullmatch(r"\d{8}", date) or not (1 <= int(date[4:6]) <= 12 and 1 <= int(date[6:]) <= 31):
        raise SourceError(origin, "StudyDate", f"not a date in YYYYMMDD form: {date!r}")
    match = re.fullmatch(r"(\d{1,6})(\.\d+)?", time.strip())
    if match is None:
        raise SourceError(origin, "StudyTime", f"not a time in HHMMSS[.fff] form: {time!r}")
    whole = match.group(1).zfill(6)
    hours, minutes, seconds = int(whole[:2]), int(whole[2:4]), int(whole[4:])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise SourceError(origin, "StudyTime", f"not a time of day: {time!r}")
    return (f"{date[:4]}-{date[4:6]}-{date[6:]}", f"{whole[:2]}:{whole[2:4]}:{whole[4:]}{match.group(2) or ''}")


def _table(root: Path, name: str, required: bool) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise SourceError(str(root), name, f"no {name} or {name}.gz under the MIMIC-CXR root")
    return None


@dataclasses.dataclass
class _Study:
    """A study being gathered from its metadata rows."""

    subject_id: str
    order_key: tuple[str, str]
    split: str | None
    first_row: int
    images: list[SourceImage] = dataclasses.field(default_factory=list)


class MimicCxrSource(StudySource):
    """MIMIC-CXR under `root` (images, tables) and `reports_root` (reports; default `root`)."""

    name = "mimic-cxr"
    patients_together = True

    def __init__(self, root: str | os.PathLike, reports_root: str | os.PathLike | None = None,
                 skip_invalid: bool = False):
        super().__init__(skip_invalid)
        self.root = Path(os.path.abspath(root))
        self.image_root = ImageRoot(self.root)
        self.reports_root = Path(os.path.abspath(reports_root if reports_root is not None else root))
        self.metadata_path = _table(self.root, METADATA_CSV, required=True)
        self.split_path = _table(self.root, SPLIT_CSV, required=False)

    def entries(self) -> Iterator[StudyEntry]:
        self.invalid.clear()
        splits = self._splits()
        studies: dict[str, _Study] = {}
        for row in iter_csv_rows(self.metadata_path, _METADATA_COLUMNS):
            try:
                self._add_row(row, splits, studies)
            except SourceError as error:
                self.invalid.reject(error)
        by_patient = sorted(studies.items(), key=lambda item: (natural_key(item[1].subject_id), natural_key(item[0])))
        for study_id, study in by_patient:
            try:
                yield self._entry(study_id, study)
            except SourceError as error:
                self.invalid.reject(error)

    def load(self, entry: StudyEntry) -> SourceStudy:
        report_path, images, split = entry.locator
        path = self.reports_root / report_path
        try:
            report = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SourceError(str(path), "report", f"cannot be read: {error}") from None
        return SourceStudy(source=self.name, patient_id=entry.patient_id, study_id=entry.study_id, report=report,
                           images=images, order_key=entry.order_key, split=split, origin=entry.origin)

    def _splits(self) -> dict[str, str] | None:
        """dicom_id -> split name from the split table; None when there is no split table."""
        if self.split_path is None:
            return None
        splits = {}
        for row in iter_csv_rows(self.split_path, _SPLIT_COLUMNS):
            value = row.values["split"].strip()
            if value not in _SPLITS:
                self.invalid.reject(SourceError(f"{self.split_path}:{row.number}", "split",
                                                f"unknown split {value!r} (expected {', '.join(_SPLITS)})"))
                continue
            splits[row.values["dicom_id"].strip()] = _SPLITS[value]
        return splits

    def _add_row(self, row: CsvRow, splits: dict[str, str] | None, studies: dict[str, _Study]) -> None:
        """Check one metadata row and add its image to its study (SourceError naming the field)."""
        origin = f"{self.metadata_path}:{row.number}"
        values = {column: row.values[column].strip() for column in _METADATA_COLUMNS}
        for column in ("subject_id", "study_id"):
            if not values[column].isdigit():
                raise SourceError(origin, column, f"not a MIMIC-CXR id (digits): {values[column]!r}")
        dicom_id, subject_id, study_id = values["dicom_id"], values["subject_id"], values["study_id"]
        if not _DICOM_ID.fullmatch(dicom_id):
            raise SourceError(origin, "dicom_id", f"not a MIMIC-CXR dicom_id: {dicom_id!r}")
        order_key = mimic_order_key(values["StudyDate"], values["StudyTime"], origin)
        view = normalise_view(values["ViewPosition"], origin, "ViewPosition")
        split = _row_split(splits, dicom_id, origin)
        folder = f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"
        path = self.image_root.first_existing([f"{folder}/{dicom_id}.jpg", f"{folder}/{dicom_id}.dcm"], origin,
                                              "dicom_id")
        study = studies.get(study_id)
        if study is None:
            study = studies[study_id] = _Study(subject_id, order_key, split, row.number)
        for field, mine, theirs in (("subject_id", subject_id, study.subject_id),
                                    ("StudyDate/StudyTime", order_key, study.order_key), ("split", split, study.split)):
            if mine != theirs:
                raise SourceError(origin, field, f"{mine!r} differs from {theirs!r} of the same study "
                                                 f"{study_id} at row {study.first_row}")
        study.images.append(SourceImage(path=path, view=view, image_id=dicom_id))

    def _entry(self, study_id: str, study: _Study) -> StudyEntry:
        origin = f"{self.metadata_path}:{study.first_row}"
        report_path = f"files/p{study.subject_id[:2]}/p{study.subject_id}/s{study_id}.txt"
        if not (self.reports_root / report_path).is_file():
            raise SourceError(str(self.reports_root / report_path), "report",
                              f"no report file for study {study_id} (metadata row {study.first_row})")
        return StudyEntry(patient_id=study.subject_id, study_id=study_id, order_key=study.order_key, origin=origin,
                          locator=(report_path, tuple(study.images), study.split))


def _row_split(splits: dict[str, str] | None, dicom_id: str, origin: str) -> str | None:
    if splits is None:
        return None
    if dicom_id not in splits:
        raise SourceError(origin, "dicom_id", f"{dicom_id!r} is not in {SPLIT_CSV}")
    return splits[dicom_id]
