"""CheXpert labels (`valid.csv`, or the test labels' `test.csv`) for presence classification.

The published header: `Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, Enlarged
Cardiomediastinum, Cardiomegaly, Lung Opacity, Lung Lesion, Edema, Consolidation, Pneumonia,
Atelectasis, Pneumothorax, Pleural Effusion, Pleural Other, Fracture, Support Devices`, a row per
image, `Path` like `CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg`, found under
`root` as written or without its first folder (root = the CheXpert folder itself). A table without
`Frontal/Lateral` tells the view by the file name (`_frontal`).

Items: every frontal image, one presence question per observation (the 14 of
`reports.chexpert_labeller.CHEXPERT_OBSERVATIONS`); lateral images are skipped. A label of 1 is
"Yes", 0 or blank "No" (blank: not mentioned, CheXpert's own reading); an uncertain label (-1)
follows `uncertain`: "ignore" (the default: that observation of that image is not scored, as the
CheXpert paper's U-Ignore), "ones" ("Yes", U-Ones) or "zeros" ("No", U-Zeros). The radiologist
labels of valid.csv and test.csv hold no -1. Anything else is a malformed row.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path, PurePosixPath

from data_pipeline.construct.csv_records import iter_csv_rows
from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_study import SourceError
from data_pipeline.external.external_items import PRESENCE, ExternalItem, ExternalSet
from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS

__all__ = ["UNCERTAIN_POLICIES", "read_chexpert", "chexpert_answer"]

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
_VALUES = {"1": "Yes", "1.0": "Yes", "0": "No", "0.0": "No", "": "No", "-1": None, "-1.0": None}


def chexpert_answer(value: str, uncertain: str, origin: str, field: str) -> str | None:
    """A label cell -> "Yes" / "No", None for an uncertain label under "ignore"; SourceError otherwise."""
    text = value.strip()
    if text not in _VALUES:
        raise SourceError(origin, field, f"expected 1, 0, -1 or blank, got {value!r}")
    answer = _VALUES[text]
    if answer is None and uncertain != "ignore":
        return "Yes" if uncertain == "ones" else "No"
    return answer


def _frontal(values: dict[str, str], path: str, origin: str) -> bool:
    if "Frontal/Lateral" not in values:
        return "frontal" in PurePosixPath(path).name.lower()
    side = values["Frontal/Lateral"].strip().lower()
    if side not in ("frontal", "lateral"):
        raise SourceError(origin, "Frontal/Lateral", f"expected Frontal or Lateral, got {values['Frontal/Lateral']!r}")
    return side == "frontal"


def read_chexpert(root: str | os.PathLike, labels: str = "valid.csv", uncertain: str = "ignore") -> ExternalSet:
    """The frontal images of the label table `root/labels` and their 14 presence items (module docstring)."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    root = Path(os.path.abspath(root))
    table = root / labels
    if not table.is_file():
        raise SourceError(str(table), "(file)", "no such label table")
    images = ImageRoot(root)
    items, skipped, used = [], Counter(), 0
    for row in iter_csv_rows(table, ("Path", *CHEXPERT_OBSERVATIONS)):
        origin = f"{table}:{row.number}"
        path = row.values["Path"].strip()
        if not _frontal(row.values, path, origin):
            skipped["lateral image"] += 1
            continue
        answers = {o: chexpert_answer(row.values[o], uncertain, origin, o) for o in CHEXPERT_OBSERVATIONS}
        parts = PurePosixPath(path).parts
        candidates = [path] + (["/".join(parts[1:])] if len(parts) > 1 else [])
        file = os.path.join(images.path, images.first_existing(candidates, origin, "Path"))
        used += 1
        for observation, answer in answers.items():
            if answer is None:
                skipped["uncertain label (ignored)"] += 1
                continue
            items.append(ExternalItem(item_id=f"{path}#{observation}", group=path, images=(file,), reference=answer,
                                      label=observation))
    return ExternalSet("chexpert", PRESENCE, f"{labels} (uncertain labels: {uncertain})", tuple(items), used, skipped,
                       str(table))
