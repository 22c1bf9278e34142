"""Radiologist boxes for stage-3 detection: a VinDr-CXR-style CSV, in pixels.

The layout is VinDr-CXR's `annotations_test.csv` (`image_id, class_name, x_min, y_min, x_max,
y_max`; `annotations_train.csv` adds `rad_id`, which is read and ignored). A row whose class is
"No finding" carries no box (its coordinates are empty) and is kept as a statement that the
image was read and found clear. Coordinates are pixels of the original image; the stage
generators scale them to the released 0-100 grid with the image's size.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping

from data_pipeline.construct.source_study import SourceError

__all__ = ["NO_FINDING", "PixelBox", "read_box_annotations"]

NO_FINDING = "No finding"
_REQUIRED = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")


@dataclasses.dataclass(frozen=True)
class PixelBox:
    """One labelled box on one image, in pixels of the original image (x to the right, y down)."""

    class_name: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


def _coordinate(row: Mapping[str, str], field: str, origin: str) -> float:
    text = (row.get(field) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise SourceError(origin, field, f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SourceError(origin, field, f"must be a finite, non-negative pixel coordinate, got {text!r}")
    return value


def _row_box(row: Mapping[str, str], origin: str) -> PixelBox | None:
    """The row's box; None for a "No finding" row (which has no coordinates)."""
    class_name = (row.get("class_name") or "").strip()
    if not class_name:
        raise SourceError(origin, "class_name", "empty")
    if class_name == NO_FINDING and not any((row.get(f) or "").strip() for f in _REQUIRED[2:]):
        return None
    x_min, y_min, x_max, y_max = (_coordinate(row, f, origin) for f in _REQUIRED[2:])
    if x_max <= x_min or y_max <= y_min:
        raise SourceError(origin, "x_max/y_max", f"an empty box: ({x_min}, {y_min}) to ({x_max}, {y_max})")
    return PixelBox(class_name, x_min, y_min, x_max, y_max)


def read_box_annotations(path: str | os.PathLike) -> dict[str, tuple[PixelBox, ...]]:
    """image_id -> its boxes in file order (an image with only "No finding" rows maps to ()).

    Raises SourceError naming the file, the row (1-based, the header is row 1) and the field
    for a missing column, an empty class or a coordinate that is not a number or an empty box.
    """
    boxes: dict[str, list[PixelBox]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise SourceError(f"{os.fspath(path)}:1", ",".join(missing), "missing column(s) in the header")
        for row_number, row in enumerate(reader, start=2):
            origin = f"{os.fspath(path)}:{row_number}"
            image_id = (row.get("image_id") or "").strip()
            if not image_id:
                raise SourceError(origin, "image_id", "empty")
            box = _row_box(row, origin)
            boxes.setdefault(image_id, [])
            if box is not None:
                boxes[image_id].append(box)
    return {image_id: tuple(found) for image_id, found in boxes.items()}
