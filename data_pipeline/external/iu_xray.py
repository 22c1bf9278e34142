"""IU X-Ray (Open-i, Indiana University) for report generation, in any of its three common layouts.

Under `root`, the first layout found is read:

1. R2Gen's `annotation.json` (Chen et al. 2020, the split nearly every report-generation paper
   uses): `{"train": [...], "val": [...], "test": [...]}`, each entry
   `{"id": "CXR2384_IM-0942", "report": "...", "image_path": ["CXR2384_IM-0942/0.png", ...],
   "split": "test"}`, images under `root/images/`. The split is the file's own (its test list, 590
   studies in the published file); the reference is its `report`.
2. The Kaggle CSV export: `indiana_reports.csv` (`uid, MeSH, Problems, image, indication,
   comparison, findings, impression`) and `indiana_projections.csv` (`uid, filename, projection`:
   Frontal / Lateral), images under `root/images/images_normalized/` (or `root/images/`, `root/`).
3. The Open-i XMLs (`root/ecgen-radiology/*.xml`, images under `root/` or `root/NLMCXR_png/`), read
   with the construct reader (`construct.openi_source.read_openi_report`).

Layouts 2 and 3 ship no split: the test studies are fixed by the project's one split rule
(`files.split_rule.patient_split`) on the study number ("CXR12" and uid "12" are study 12) with
`IU_SPLIT` (70 / 10 / 20 %, R2Gen's proportions, seed 0), so both layouts give the same studies;
these are not R2Gen's test studies, and numbers on them are comparable only to each other. Their
reference is the FINDINGS section, the IMPRESSION when a report has no findings (the rule used for
MIMIC-CXR); a study with neither is skipped, as is one without an image. Images: frontal first
(layout 2 by `projection`; layouts 1 and 3 in the file's order).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from data_pipeline.construct.csv_records import iter_csv_rows
from data_pipeline.construct.openi_source import read_openi_report
from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_index import natural_key
from data_pipeline.construct.source_study import SourceError
from data_pipeline.external.external_items import REPORT, ExternalItem, ExternalSet
from data_pipeline.files.split_rule import SplitConfig, patient_split
from data_pipeline.schema.splits import TEST

__all__ = ["IU_SPLIT", "ANNOTATION_JSON", "REPORTS_CSV", "PROJECTIONS_CSV", "read_iu_xray", "iu_report_text"]

IU_SPLIT = SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=0)
ANNOTATION_JSON = "annotation.json"
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
_CSV_IMAGE_DIRS = ("images/images_normalized", "images", ".")
_XML_DIRS = ("ecgen-radiology", ".")
_XML_IMAGE_DIRS = (".", "NLMCXR_png")


def _study_number(uid: str) -> str:
    """"CXR12" and "12" -> "12": the key of the split rule, the same in every layout."""
    return uid[3:] if uid.upper().startswith("CXR") else uid


def iu_in_test(uid: str) -> bool:
    return patient_split(_study_number(uid), IU_SPLIT) == TEST


def iu_report_text(findings: str, impression: str) -> str | None:
    """The reference: the findings, else the impression (whitespace runs made single), else None."""
    for text in (findings, impression):
        text = " ".join(text.split())
        if text:
            return text
    return None


def _annotation(root: Path) -> ExternalSet:
    path = root / ANNOTATION_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SourceError(str(path), "(file)", f"not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("test"), list):
        raise SourceError(str(path), "test", "expected R2Gen's {\"train\": [...], \"val\": [...], \"test\": [...]}")
    images = ImageRoot(root / "images")
    items = []
    for index, entry in enumerate(document["test"]):
        origin = f"{path}: test[{index}]"
        if not isinstance(entry, dict):
            raise SourceError(origin, "(entry)", f"expected an object, got {type(entry).__name__}")
        study_id, report, paths = entry.get("id"), entry.get("report"), entry.get("image_path")
        if not isinstance(study_id, str) or not study_id.strip():
            raise SourceError(origin, "id", f"expected a non-empty string, got {study_id!r}")
        if not isinstance(report, str) or not report.strip():
            raise SourceError(origin, "report", f"expected a non-empty string, got {report!r}")
        if not isinstance(paths, list) or not paths:
            raise SourceError(origin, "image_path", f"expected a non-empty list of paths, got {paths!r}")
        files = tuple(os.path.join(images.path, images.existing(p, origin, "image_path")) for p in paths)
        items.append(ExternalItem(item_id=study_id, group=study_id, images=files, reference=" ".join(report.split())))
    return ExternalSet("iu-xray", REPORT, "test (R2Gen annotation.json)", tuple(items), len(items), Counter(),
                       str(path))


def _csv_export(root: Path) -> ExternalSet:
    projections: dict[str, list[tuple[bool, str, str]]] = {}
    image_dir = next((root / d for d in _CSV_IMAGE_DIRS if (root / d).is_dir()), root)
    images = ImageRoot(image_dir)
    for row in iter_csv_rows(root / PROJECTIONS_CSV, ("uid", "filename", "projection")):
        origin = f"{root / PROJECTIONS_CSV}:{row.number}"
        projection = row.values["projection"].strip().lower()
        if projection not in ("frontal", "lateral"):
            raise SourceError(origin, "projection", f"expected Frontal or Lateral, got {row.values['projection']!r}")
        uid = row.values["uid"].strip()
        if not uid:
            raise SourceError(origin, "uid", "empty")
        projections.setdefault(uid, []).append((projection != "frontal", row.values["filename"].strip(), origin))
    items, skipped, used = [], Counter(), 0
    for row in iter_csv_rows(root / REPORTS_CSV, ("uid", "findings", "impression")):
        origin = f"{root / REPORTS_CSV}:{row.number}"
        uid = row.values["uid"].strip()
        if not uid:
            raise SourceError(origin, "uid", "empty")
        if not iu_in_test(uid):
            skipped["not in the test split"] += 1
            continue
        report = iu_report_text(row.values["findings"], row.values["impression"])
        if report is None:
            skipped["no findings or impression"] += 1
            continue
        views = sorted(projections.get(uid, ()), key=lambda v: v[0])  # frontal first, file order kept
        if not views:
            skipped[f"no image in {PROJECTIONS_CSV}"] += 1
            continue
        files = tuple(os.path.join(images.path, images.existing(name, where, "filename")) for _, name, where in views)
        used += 1
        items.append(ExternalItem(item_id=uid, group=uid, images=files, reference=report))
    return ExternalSet("iu-xray", REPORT, "test (hash split 70/10/20 of the study number, seed 0)", tuple(items),
                       used, skipped, str(root / REPORTS_CSV))


def _sections(report: str) -> dict[str, str]:
    """The "LABEL: text" lines of the construct reader's report -> {label: text}."""
    sections = {}
    for line in report.splitlines():
        label, _, text = line.partition(": ")
        sections[label] = text
    return sections


def _xmls(root: Path, folder: Path) -> ExternalSet:
    image_root = ImageRoot(next((root / d for d in _XML_IMAGE_DIRS[::-1] if (root / d).is_dir()), root))
    items, skipped, used = [], Counter(), 0
    for path in sorted(folder.glob("*.xml"), key=lambda p: natural_key(p.name)):
        try:
            study = read_openi_report(path, image_root)
        except SourceError as error:
            if error.field == "AbstractText":  # a report without text: left out, not malformed
                skipped["no report text"] += 1
                continue
            raise
        if not iu_in_test(study.study_id):
            skipped["not in the test split"] += 1
            continue
        sections = _sections(study.report)
        report = iu_report_text(sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""))
        if report is None:
            skipped["no findings or impression"] += 1
            continue
        used += 1
        files = tuple(os.path.join(image_root.path, image.path) for image in study.images)
        items.append(ExternalItem(item_id=study.study_id, group=study.study_id, images=files, reference=report))
    return ExternalSet("iu-xray", REPORT, "test (hash split 70/10/20 of the study number, seed 0)", tuple(items),
                       used, skipped, str(folder))


def read_iu_xray(root: str | os.PathLike) -> ExternalSet:
    """The test studies of IU X-Ray under `root` (module docstring for the layouts and the split)."""
    root = Path(os.path.abspath(root))
    if (root / ANNOTATION_JSON).is_file():
        return _annotation(root)
    if (root / REPORTS_CSV).is_file() and (root / PROJECTIONS_CSV).is_file():
        return _csv_export(root)
    for folder in (root / d for d in _XML_DIRS):
        if folder.is_dir() and any(folder.glob("*.xml")):
            return _xmls(root, folder)
    raise SourceError(str(root), "(layout)", f"no {ANNOTATION_JSON}, no {REPORTS_CSV} + {PROJECTIONS_CSV} and no "
                                             "ecgen-radiology/*.xml: not an IU X-Ray folder")
