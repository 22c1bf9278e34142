"""The external sets by name: which reader reads each and what task it asks.

    data = read_external_set("chexpert", "/data/CheXpert-v1.0-small", labels="valid.csv")
    print(data.counts_line())
"""

from __future__ import annotations

import os

from data_pipeline.external.chexpert import read_chexpert
from data_pipeline.external.external_items import DETECTION, PRESENCE, REPORT, VQA, ExternalSet
from data_pipeline.external.iu_xray import read_iu_xray
from data_pipeline.external.mimic_cxr import read_mimic_cxr
from data_pipeline.external.vindr_cxr import read_vindr_cxr
from data_pipeline.external.vqa_sets import read_slake, read_vqa_rad

__all__ = ["SET_NAMES", "SET_TASKS", "read_external_set"]

SET_TASKS = {"iu-xray": REPORT, "mimic-cxr": REPORT, "chexpert": PRESENCE, "vindr-cxr": DETECTION,
             "vqa-rad": VQA, "slake": VQA}
SET_NAMES = tuple(SET_TASKS)


def read_external_set(name: str, root: str | os.PathLike, *, file: str | None = None, uncertain: str = "ignore",
                      reports_root: str | os.PathLike | None = None) -> ExternalSet:
    """Read set `name` under `root`. file: the label table (chexpert, default valid.csv) or question
    file (vqa-rad testset.json, slake test.json); uncertain: CheXpert's policy for -1 labels;
    reports_root: MIMIC-CXR's reports folder (default `root`). ValueError for an unknown name or
    an option the set does not take; `SourceError` (file, row, field) for malformed input."""
    if name not in SET_TASKS:
        raise ValueError(f"unknown external set {name!r}; expected one of {', '.join(SET_NAMES)}")
    if file is not None and name not in ("chexpert", "vqa-rad", "slake"):
        raise ValueError(f"set {name!r} takes no file option")
    if reports_root is not None and name != "mimic-cxr":
        raise ValueError("reports_root is an option of mimic-cxr only")
    if name == "iu-xray":
        return read_iu_xray(root)
    if name == "mimic-cxr":
        return read_mimic_cxr(root, reports_root)
    if name == "chexpert":
        return read_chexpert(root, file or "valid.csv", uncertain)
    if name == "vindr-cxr":
        return read_vindr_cxr(root)
    return (read_vqa_rad if name == "vqa-rad" else read_slake)(root, file)
