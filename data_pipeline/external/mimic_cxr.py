"""MIMIC-CXR for report generation: MIMIC-CXR-JPG images and tables, the reports, the official split.

Read with the construct reader (`construct.mimic_cxr_source.MimicCxrSource`): under `root`,
`mimic-cxr-2.0.0-metadata.csv[.gz]`, `mimic-cxr-2.0.0-split.csv[.gz]` (`dicom_id, study_id,
subject_id, split`; required here) and `files/p10/p10000032/s50414267/<dicom_id>.jpg`; the reports
(`files/p10/p10000032/s50414267.txt`) under `reports_root` (default `root`).

The studies are those of the official `test` split. The reference is the report's FINDINGS
section, its IMPRESSION when it has no findings (as R2Gen and most report-generation papers
prepare MIMIC-CXR), the sections found by the construct's section reader
(`construct.report_sections`); a study with neither is skipped. Images: frontal views (PA, AP, ...)
first, then the others, in the table's order. Metadata rows the construct reader refuses (an image
file not downloaded, a malformed field) drop that image and are counted by field, the first three
quoted (file, row, field, reason); a study whose images are all dropped is not read.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from data_pipeline.construct.mimic_cxr_source import SPLIT_CSV, MimicCxrSource
from data_pipeline.construct.report_rules import default_rules
from data_pipeline.construct.report_sections import header_pattern, split_sections
from data_pipeline.construct.source_study import SourceError
from data_pipeline.external.external_items import REPORT, ExternalItem, ExternalSet
from data_pipeline.schema.splits import TEST

__all__ = ["read_mimic_cxr", "report_reference"]

_SHOWN = 3  # refused metadata rows quoted on the console (all are counted)


def report_reference(report: str) -> str | None:
    """The findings of a report, else its impression (whitespace runs made single), else None."""
    rules = default_rules()
    sections = split_sections(report, rules, header_pattern(rules))
    for wanted in ("findings", "impression"):
        text = " ".join(" ".join(body for name, body in sections if name == wanted).split())
        if text:
            return text
    return None


def read_mimic_cxr(root: str | os.PathLike, reports_root: str | os.PathLike | None = None) -> ExternalSet:
    """The official test studies of MIMIC-CXR under `root` (module docstring)."""
    source = MimicCxrSource(root, reports_root, skip_invalid=True)
    if source.split_path is None:
        raise SourceError(str(source.root), SPLIT_CSV, f"no {SPLIT_CSV}[.gz]: the official test split is needed")
    items, skipped, used = [], Counter(), 0
    for entry in source.entries():
        _, images, split = entry.locator
        if split != TEST:
            skipped["not in the test split"] += 1
            continue
        study = source.load(entry)
        reference = report_reference(study.report)
        if reference is None:
            skipped["no findings or impression"] += 1
            continue
        used += 1
        ordered = sorted(images, key=lambda image: not image.is_frontal)
        files = tuple(os.path.join(source.image_root.path, image.path) for image in ordered)
        items.append(ExternalItem(item_id=entry.study_id, group=entry.study_id, images=files, reference=reference))
    for row in source.skipped:
        skipped[f"metadata row refused ({row.field})"] += 1
    return ExternalSet("mimic-cxr", REPORT, "test (official mimic-cxr-2.0.0-split)", tuple(items), used, skipped,
                       str(Path(source.metadata_path)), refused=tuple(str(row) for row in source.skipped[:_SHOWN]))
