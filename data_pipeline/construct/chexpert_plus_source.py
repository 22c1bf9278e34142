"""CheXpert Plus (Stanford AIMI) -> `SourceStudy`: the report table and the images under a root.

The published table `df_chexpert_plus_240401.csv` has one row per image:

    path_to_image, path_to_dcm, frontal_lateral, ap_pa, deid_patient_id, patient_report_date_order,
    report, section_narrative, section_clinical_history, section_history, section_comparison,
    section_technique, section_procedure_comments, section_findings, section_impression,
    section_end_of_impression, section_summary, section_accession_number, age, sex, race,
    ethnicity, interpreter_needed, insurance_type, recent_bmi, deceased, split

e.g. `train/patient42142/study5/view1_frontal.jpg, ..., Frontal, AP, patient42142, 5, "NARRATIVE:
...", ..., train`. `report` is the whole text with its headers (NARRATIVE, HISTORY, COMPARISON,
FINDINGS, IMPRESSION, SUMMARY, ...); the section_* columns are its parts and are not needed.

A study is the rows of one (deid_patient_id, patient_report_date_order): they must share the
report and the study folder of path_to_image, whose name is the study id (`study5`, numbered per
patient as CheXpert does; the patient id is deid_patient_id). The order key is
(patient_report_date_order,). A row's view is ap_pa when given (AP, PA, LL, RL), else LATERAL for
a Lateral row, else unknown (a Frontal row without ap_pa); split "valid" is "validation". The
image is path_to_image under the image root, else the same path with the other of .jpg/.png
(the PNG release keeps the table's names with a .png suffix), else path_to_dcm.

The index (ids, order, row offsets, checked images) is built in one pass over the table; reports
are read back one study at a time from their row's byte offset. Patients come in the order the
table first names them, each patient's studies together. With `skip_invalid` an invalid row drops
that image only (a study whose rows are all invalid is not read); each drop is listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from data_pipeline.construct.csv_records import CsvRow, csv_header, iter_csv_rows, read_csv_row
from data_pipeline.construct.source_images import ImageRoot, relative_image_path
from data_pipeline.construct.source_index import StudyEntry, StudySource, checked_id
from data_pipeline.construct.source_study import SourceError, SourceImage, SourceStudy, normalise_view
from data_pipeline.schema.splits import canonical_split

__all__ = ["CHEXPERT_PLUS_COLUMNS", "ChexpertPlusSource", "chexpert_view"]

# The columns the reader needs (path_to_dcm is read when present).
CHEXPERT_PLUS_COLUMNS = ("path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id",
                         "patient_report_date_order", "report", "split")
_SUFFIX_SWAP = {".jpg": ".png", ".png": ".jpg"}


def chexpert_view(frontal_lateral: str, ap_pa: str, origin: str) -> str | None:
    """The view of a row: ap_pa when given, LATERAL for a Lateral row, None for a bare Frontal one."""
    side = frontal_lateral.strip().lower()
    if side not in ("frontal", "lateral", ""):
        raise SourceError(origin, "frontal_lateral", f"expected Frontal or Lateral, got {frontal_lateral!r}")
    view = normalise_view(ap_pa, origin, "ap_pa")
    if view is None:
        return "LATERAL" if side == "lateral" else None
    if side and (side == "lateral") != (view in ("LL", "RL", "LATERAL")):
        raise SourceError(origin, "ap_pa", f"{ap_pa!r} contradicts frontal_lateral {frontal_lateral!r}")
    return view


def _order(text: str, origin: str) -> int:
    """patient_report_date_order as an int ("5" or "5.0", as pandas exports write it)."""
    try:
        value = float(text)
    except ValueError:
        raise SourceError(origin, "patient_report_date_order", f"not a number: {text!r}") from None
    if not value.is_integer() or value < 0:
        raise SourceError(origin, "patient_report_date_order", f"not a non-negative whole number: {text!r}")
    return int(value)


@dataclasses.dataclass
class _Study:
    """A study being gathered from its rows."""

    study_id: str
    split: str | None
    report_digest: bytes
    first_row: int
    offset: int
    images: list[SourceImage] = dataclasses.field(default_factory=list)


class ChexpertPlusSource(StudySource):
    """CheXpert Plus: the report table `csv` and the images under `image_root`."""

    name = "chexpert-plus"
    patients_together = True

    def __init__(self, csv: str | os.PathLike, image_root: str | os.PathLike, skip_invalid: bool = False):
        super().__init__(skip_invalid)
        self.csv_path = Path(os.path.abspath(csv))
        self.image_root = ImageRoot(image_root)
        self.header = csv_header(self.csv_path, CHEXPERT_PLUS_COLUMNS)

    def entries(self) -> Iterator[StudyEntry]:
        self.invalid.clear()
        patients: dict[str, dict[int, _Study]] = {}
        for row in iter_csv_rows(self.csv_path, CHEXPERT_PLUS_COLUMNS):
            try:
                self._add_row(row, patients)
            except SourceError as error:
                self.invalid.reject(error)
        for patient_id, studies in patients.items():
            for order, study in studies.items():
                yield StudyEntry(patient_id=patient_id, study_id=study.study_id, order_key=(order,),
                                 origin=f"{self.csv_path}:{study.first_row}",
                                 locator=(study.first_row, study.offset, tuple(study.images), study.split))

    def load(self, entry: StudyEntry) -> SourceStudy:
        number, offset, images, split = entry.locator
        row = read_csv_row(self.csv_path, self.header, offset, number)
        if row.values["deid_patient_id"].strip() != entry.patient_id:
            raise SourceError(entry.origin, "deid_patient_id", "the row changed since the index was read")
        return SourceStudy(source=self.name, patient_id=entry.patient_id, study_id=entry.study_id,
                           report=row.values["report"], images=images, order_key=entry.order_key, split=split,
                           origin=entry.origin)

    def _add_row(self, row: CsvRow, patients: dict[str, dict[int, _Study]]) -> None:
        """Check one row and add its image to its study (SourceError naming the field)."""
        origin = f"{self.csv_path}:{row.number}"
        values = row.values
        patient_id = checked_id(values["deid_patient_id"], origin, "deid_patient_id")
        order = _order(values["patient_report_date_order"], origin)
        raw_path = relative_image_path(values["path_to_image"], origin, "path_to_image")
        study_id = checked_id(PurePosixPath(raw_path).parent.name, origin, "path_to_image")
        view = chexpert_view(values["frontal_lateral"], values["ap_pa"], origin)
        split = _split(values["split"], origin)
        if not values["report"].strip():
            raise SourceError(origin, "report", "empty")
        digest = hashlib.sha1(values["report"].encode("utf-8")).digest()
        path = self.image_root.first_existing(_image_candidates(raw_path, values.get("path_to_dcm", "")), origin,
                                              "path_to_image")
        studies = patients.setdefault(patient_id, {})
        study = studies.get(order)
        if study is None:
            clash = next((s for s in studies.values() if s.study_id == study_id), None)
            if clash is not None:
                raise SourceError(origin, "patient_report_date_order",
                                  f"{order} differs from the order of study {study_id} at row {clash.first_row}")
            study = studies[order] = _Study(study_id, split, digest, row.number, row.offset)
        for field, mine, theirs in (("path_to_image", study_id, study.study_id), ("split", split, study.split),
                                    ("report", digest, study.report_digest)):
            if mine != theirs:
                shown = "the report text" if field == "report" else repr(mine)
                raise SourceError(origin, field, f"{shown} differs from row {study.first_row} of the same study "
                                                 f"(patient {patient_id}, order {order})")
        study.images.append(SourceImage(path=path, view=view, image_id=str(PurePosixPath(raw_path).with_suffix(""))))


def _split(value: str, origin: str) -> str | None:
    if not value.strip():
        return None
    name = canonical_split(value)
    if name is None:
        raise SourceError(origin, "split", f"unknown split {value!r} (expected train, valid or test)")
    return name


def _image_candidates(path: str, path_to_dcm: str) -> list[str]:
    """path_to_image, then the same with the other of .jpg/.png, then path_to_dcm (when given)."""
    candidates = [path]
    swapped = _SUFFIX_SWAP.get(PurePosixPath(path).suffix.lower())
    if swapped:
        candidates.append(str(PurePosixPath(path).with_suffix(swapped)))
    if path_to_dcm.strip():
        candidates.append(path_to_dcm.strip())
    return candidates
