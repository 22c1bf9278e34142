"""VinDr-CXR radiologist boxes (`annotations_test.csv`) for detection.

The PhysioNet layout (VinDr-CXR 1.0.0): `annotations/annotations_test.csv` (`image_id, class_name,
x_min, y_min, x_max, y_max`, pixels of the original image; a "No finding" row has empty
coordinates) and the images `test/<image_id>.dicom`; read with the construct's box reader
(`construct.box_annotations.read_box_annotations`). The table may also sit at `root/`, and an
image may be a `.dcm`, `.png` or `.jpg` of the same name (a converted copy).

Items: every image of the table, one detection question per finding class, the classes being every
class the table names (its "No finding" aside), so an image is also asked about the classes it
does not show (a box drawn there is a false positive). The reference of an item is its class's
boxes on that image (none for a class not seen there).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from data_pipeline.construct.box_annotations import read_box_annotations
from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_study import SourceError
from data_pipeline.external.external_items import DETECTION, ExternalItem, ExternalSet

__all__ = ["ANNOTATIONS_CSV", "read_vindr_cxr"]

ANNOTATIONS_CSV = "annotations_test.csv"
_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg")


def read_vindr_cxr(root: str | os.PathLike) -> ExternalSet:
    """The test images of VinDr-CXR under `root`, one item per (image, class) (module docstring)."""
    root = Path(os.path.abspath(root))
    table = next((p for p in (root / "annotations" / ANNOTATIONS_CSV, root / ANNOTATIONS_CSV) if p.is_file()), None)
    if table is None:
        raise SourceError(str(root), ANNOTATIONS_CSV, f"no annotations/{ANNOTATIONS_CSV} or {ANNOTATIONS_CSV}")
    boxes = read_box_annotations(table)
    classes = sorted({box.class_name for found in boxes.values() for box in found})
    if not classes:
        raise SourceError(str(table), "class_name", "the table has no box at all")
    images = ImageRoot(root)
    items = []
    for image_id, found in boxes.items():
        candidates = [f"test/{image_id}{suffix}" for suffix in _SUFFIXES]
        file = os.path.join(images.path, images.first_existing(candidates, f"{table}: image {image_id}", "image_id"))
        for name in classes:
            items.append(ExternalItem(item_id=f"{image_id}#{name}", group=image_id, images=(file,), reference="",
                                      label=name, boxes=tuple(b for b in found if b.class_name == name)))
    return ExternalSet("vindr-cxr", DETECTION, "test (annotations_test.csv, the 5-radiologist consensus)",
                       tuple(items), len(boxes), Counter(), str(table))
