"""Open-i / IU X-ray (Indiana University chest X-ray collection) -> `SourceStudy`.

The published layout: a folder of report XMLs (`ecgen-radiology/1.xml`, ...), each

    <eCitation>
      <uId id="CXR1"/> <pmcId id="1"/> <IUXRId id="1"/> ...
      <MedlineCitation ...><Article ...> ... <Abstract>
        <AbstractText Label="COMPARISON">None.</AbstractText>
        <AbstractText Label="INDICATION">Positive TB test</AbstractText>
        <AbstractText Label="FINDINGS">The cardiac silhouette ...</AbstractText>
        <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
      </Abstract> ... </Article></MedlineCitation>
      <MeSH><major>normal</major></MeSH>
      <parentImage id="CXR1_1_IM-0001-3001">
        <figureId>F1</figureId> <caption>Xray Chest PA and Lateral</caption>
        <panel type="single"><url>/hadoop/storage/radiology/extract/CXR1_1_IM-0001-3001.jpg</url> ...
      </parentImage> ...
    </eCitation>

and the images as `<parentImage id>.png` (the PNG release) or `.jpg` under the image root.

One XML file is one study: its study id is the uId ("CXR1") and, the collection having no
patient ids, its patient is the same id, so no study has a prior or a next (no order key) and no
split. The report is the labelled sections with text, in file order, one "LABEL: text" line each
(empty sections left out). The view is not read: captions describe the study ("PA and Lateral"),
not the image. A file is one row: with `skip_invalid` an invalid file (bad XML, no uId, no report
text, no image, an image file missing) is dropped and listed. Files are read in natural name
order (2.xml before 10.xml), one at a time.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_index import StudyEntry, StudySource, checked_id, natural_key
from data_pipeline.construct.source_study import SourceError, SourceImage, SourceStudy

__all__ = ["OpenISource", "read_openi_report"]


def _root(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        raise SourceError(str(path), "xml", f"not well-formed XML: {error}") from None


def _report(root: ET.Element, origin: str) -> str:
    """The labelled sections with text, one "LABEL: text" line each, in file order."""
    lines = []
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        if not label:
            raise SourceError(origin, "AbstractText", "a section without its Label attribute")
        text = " ".join("".join(element.itertext()).split())
        if text:
            lines.append(f"{label}: {text}")
    if not lines:
        raise SourceError(origin, "AbstractText", "the report has no section with text")
    return "\n".join(lines) + "\n"


def _image_ids(root: ET.Element, origin: str) -> list[str]:
    ids: list[str] = []
    for element in root.iter("parentImage"):
        image_id = checked_id(element.get("id") or "", origin, "parentImage")
        if image_id in ids:
            raise SourceError(origin, "parentImage", f"image {image_id!r} is named twice")
        ids.append(image_id)
    if not ids:
        raise SourceError(origin, "parentImage", "the report names no image")
    return ids


def read_openi_report(path: str | os.PathLike, image_root: ImageRoot, source: str = "openi") -> SourceStudy:
    """One report XML as a study (SourceError naming the file and the field at fault)."""
    origin = os.fspath(path)
    root = _root(Path(path))
    uid = root.find(".//uId")
    study_id = checked_id(uid.get("id", "") if uid is not None else "", origin, "uId")
    report = _report(root, origin)
    images = tuple(
        SourceImage(path=image_root.first_existing([f"{image_id}.png", f"{image_id}.jpg"], origin,
                                                   f"parentImage {image_id}"), view=None, image_id=image_id)
        for image_id in _image_ids(root, origin))
    return SourceStudy(source=source, patient_id=study_id, study_id=study_id, report=report, images=images,
                       order_key=None, split=None, origin=origin)


class OpenISource(StudySource):
    """Open-i report XMLs in the folder `reports`, images under `image_root`."""

    name = "openi"
    patients_together = True

    def __init__(self, reports: str | os.PathLike, image_root: str | os.PathLike, skip_invalid: bool = False):
        super().__init__(skip_invalid)
        self.reports = Path(os.path.abspath(reports))
        self.image_root = ImageRoot(image_root)
        if not self.reports.is_dir():
            raise SourceError(str(self.reports), "reports", "not a folder of report XMLs")

    def entries(self) -> Iterator[StudyEntry]:
        self.invalid.clear()
        seen: dict[str, str] = {}
        for path in sorted(self.reports.glob("*.xml"), key=lambda p: natural_key(p.name)):
            try:
                study = read_openi_report(path, self.image_root, self.name)
                if study.study_id in seen:
                    raise SourceError(str(path), "uId", f"{study.study_id!r} is also the uId of {seen[study.study_id]}")
            except SourceError as error:
                self.invalid.reject(error)
                continue
            seen[study.study_id] = str(path)
            yield StudyEntry(patient_id=study.patient_id, study_id=study.study_id, order_key=None,
                             origin=study.origin, locator=(path.name, study.images))

    def load(self, entry: StudyEntry) -> SourceStudy:
        """The report of `entry` read again from its file (its images were checked by the index)."""
        name, images = entry.locator
        report = _report(_root(self.reports / name), entry.origin)
        return SourceStudy(source=self.name, patient_id=entry.patient_id, study_id=entry.study_id, report=report,
                           images=images, order_key=None, split=None, origin=entry.origin)
