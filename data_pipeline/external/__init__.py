"""Public evaluation sets read as they are published, into `ExternalItem`s (layer 6, after `construct`).

Modules: `external_items` (`ExternalItem`, `ExternalSet`, the used/skipped counts), `iu_xray`
(R2Gen's annotation.json, the Kaggle CSV export or the Open-i XMLs), `mimic_cxr` (MIMIC-CXR-JPG and
its official split), `chexpert` (valid.csv / test.csv labels), `vindr_cxr` (annotations_test.csv
boxes), `vqa_sets` (VQA-RAD and SLAKE, their chest X-ray questions) and `external_sets` (the set
names and `read_external_set`). The construct readers are shared where the same source is read.
"""

from data_pipeline.external.external_items import ExternalItem, ExternalSet
from data_pipeline.external.external_sets import SET_NAMES, SET_TASKS, read_external_set

__all__ = ["ExternalItem", "ExternalSet", "SET_NAMES", "SET_TASKS", "read_external_set"]
