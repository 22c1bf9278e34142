"""Light, seeded training augmentation of a study's radiographs (numpy only).

Two parts, both drawn from a `np.random.Generator` the input pipeline derives
from the example's index (so a resumed run draws the same values):

- a random crop, one `CropWindow` per study: a rectangle given as fractions
  of the image, the same for every image of the study, keeping an area
  fraction in `AugmentConfig.crop_area` with a width/height change in
  `crop_aspect`. The window is widened to contain every box of the study's
  questions and answers, so no box is cut. Box markup
  (`<|box|>(x1, y1), (x2, y2)<|/box|>`, 0-100 scale) in questions and
  answers is rewritten to the cropped image's scale (`crop_study_boxes`);
  coordinates stay relative to the image content, not to any padding added
  later by `resize_with_pad`. The window is snapped to the pixel grid of the
  study's first image (the current frontal view, which detection answers
  describe), so its boxes map exactly; other images use the same fractions
  rounded outwards to their own pixel grid.
- brightness and contrast, drawn per image: `x -> clip((x - mean) * factor +
  mean + shift, 0, 1)` over the image content (`adjust_intensity`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipeline.schema.boxes import Box, literal_boxes, map_boxes, parse_boxes
from data_pipeline.schema.records import Study

__all__ = [
    "AugmentConfig",
    "CropWindow",
    "IntensityChange",
    "adjust_intensity",
    "crop_image",
    "crop_study_boxes",
    "remap_box_markup",
    "sample_crop",
    "sample_intensity",
    "study_box_extent",
]



@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (all zero-width ranges = no augmentation).

    crop_area: (min, max) fraction of the image area the crop keeps, in (0, 1].
    crop_aspect: (min, max) factor on the width/height ratio, drawn log-uniformly; > 0.
    brightness: largest additive intensity shift (intensities span [0, 1]); >= 0.
    contrast: largest relative contrast change: factor in [1 - contrast, 1 + contrast]; in [0, 1).
    """

    crop_area: tuple[float, float] = (0.85, 1.0)
    crop_aspect: tuple[float, float] = (0.9, 1.0 / 0.9)
    brightness: float = 0.05
    contrast: float = 0.1

    def __post_init__(self) -> None:
        lo, hi = self.crop_area
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_area must satisfy 0 < min <= max <= 1, got {self.crop_area}")
        lo, hi = self.crop_aspect
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_aspect must satisfy 0 < min <= max, got {self.crop_aspect}")
        if self.brightness < 0.0:
            raise ValueError(f"brightness must be >= 0, got {self.brightness}")
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"contrast must be in [0, 1), got {self.contrast}")
        object.__setattr__(self, "crop_area", tuple(float(v) for v in self.crop_area))
        object.__setattr__(self, "crop_aspect", tuple(float(v) for v in self.crop_aspect))

    @classmethod
    def none(cls) -> "AugmentConfig":
        """The identity: full image, no intensity change."""
        return cls(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), brightness=0.0, contrast=0.0)

    @property
    def is_identity(self) -> bool:
        return self == AugmentConfig.none()


@dataclasses.dataclass(frozen=True)
class CropWindow:
    """A crop rectangle in fractions of the image: rows [top, top + height), columns [left, left + width)."""

    top: float = 0.0
    left: float = 0.0
    height: float = 1.0
    width: float = 1.0

    def __post_init__(self) -> None:
        eps = 1e-9
        if not (0.0 < self.height and 0.0 < self.width and self.top >= -eps and self.left >= -eps
                and self.top + self.height <= 1.0 + eps and self.left + self.width <= 1.0 + eps):
            raise ValueError(f"crop window outside the unit square: {self}")

    @property
    def is_full(self) -> bool:
        return self == CropWindow()

    def pixel_bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) on an image of `height` x `width` pixels: the window rounded
        outwards to whole pixels (so it never loses content), at least one pixel each way."""
        eps = 1e-6
        y0 = min(height - 1, math.floor(self.top * height + eps))
        x0 = min(width - 1, math.floor(self.left * width + eps))
        y1 = max(y0 + 1, min(height, math.ceil((self.top + self.height) * height - eps)))
        x1 = max(x0 + 1, min(width, math.ceil((self.left + self.width) * width - eps)))
        return y0, y1, x0, x1

    def snapped(self, height: int, width: int) -> "CropWindow":
        """The window of `pixel_bounds(height, width)`, in fractions (exact on that pixel grid)."""
        y0, y1, x0, x1 = self.pixel_bounds(height, width)
        return CropWindow(y0 / height, x0 / width, (y1 - y0) / height, (x1 - x0) / width)

    def map_box(self, box: Box) -> Box:
        """A box on the full image's 0-100 scale -> the cropped image's 0-100 scale (clipped)."""

        def along(v: float, start: float, size: float) -> float:
            return min(100.0, max(0.0, (v - 100.0 * start) / size))

        return Box(
            box.label,
            along(box.x1, self.left, self.width),
            along(box.y1, self.top, self.height),
            along(box.x2, self.left, self.width),
            along(box.y2, self.top, self.height),
        )


@dataclasses.dataclass(frozen=True)
class IntensityChange:
    """`x -> clip((x - mean) * factor + mean + shift, 0, 1)`."""

    shift: float = 0.0
    factor: float = 1.0


def study_box_extent(study: Study) -> Box | None:
    """The smallest box holding every box of the study's questions and answers (None: no boxes).

    Answers are parsed strictly, questions leniently (a `<|box|>` format hint is not a box;
    see `data_pipeline.schema.boxes`). Raises ValueError naming the study and turn for malformed
    box markup.
    """
    boxes: list[Box] = []
    for index, item in enumerate(study.items):
        where = f"study {study.key!r} turn {index}"
        boxes += literal_boxes(item.question, f"{where} question")
        try:
            boxes += parse_boxes(item.answer)
        except ValueError as err:
            raise ValueError(f"{where} answer: {err}") from None
    if not boxes:
        return None
    return Box(
        "extent",
        min(b.x1 for b in boxes),
        min(b.y1 for b in boxes),
        max(b.x2 for b in boxes),
        max(b.y2 for b in boxes),
    )


def sample_crop(rng: np.random.Generator, config: AugmentConfig, keep: Box | None = None) -> CropWindow:
    """A random window (see the module docstring), widened to contain `keep` (0-100 scale)."""
    area = rng.uniform(*config.crop_area)
    log_lo, log_hi = (math.log(v) for v in config.crop_aspect)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    width = min(1.0, math.sqrt(area * aspect))
    height = min(1.0, math.sqrt(area / aspect))
    left = rng.uniform(0.0, 1.0 - width)
    top = rng.uniform(0.0, 1.0 - height)
    right, bottom = left + width, top + height
    if keep is not None:
        left, top = min(left, keep.x1 / 100.0), min(top, keep.y1 / 100.0)
        right, bottom = max(right, keep.x2 / 100.0), max(bottom, keep.y2 / 100.0)
    return CropWindow(top, left, min(1.0, bottom) - top, min(1.0, right) - left)


def crop_image(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """The [h, w] crop of a [H, W] image (`window.pixel_bounds`); a view when the window is full."""
    y0, y1, x0, x1 = window.pixel_bounds(*image.shape[:2])
    return image[y0:y1, x0:x1]


def remap_box_markup(text: str, window: CropWindow, where: str = "text", *, strict: bool = True) -> str:
    """`text` with every box mapped to the window's 0-100 scale (one decimal), the rest kept
    as is. strict (answers): every `<|box|>` body must be a box; not strict (questions):
    a body that is not two numeric points is text and stays untouched. `where` labels errors."""
    return map_boxes(text, window.map_box, strict=strict, where=where)


def crop_study_boxes(study: Study, window: CropWindow) -> Study:
    """The study with the box markup of its questions and answers mapped into `window`."""
    if window.is_full:
        return study
    items = tuple(
        dataclasses.replace(
            item,
            question=remap_box_markup(item.question, window, f"study {study.key!r} turn {t} question",
                                      strict=False),
            answer=remap_box_markup(item.answer, window, f"study {study.key!r} turn {t} answer"),
        )
        for t, item in enumerate(study.items)
    )
    return study.replace(items=items)


def sample_intensity(rng: np.random.Generator, config: AugmentConfig) -> IntensityChange:
    """A random brightness shift and contrast factor within the configured strengths."""
    shift = rng.uniform(-config.brightness, config.brightness)
    factor = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast)
    return IntensityChange(float(shift), float(factor))


def adjust_intensity(
    image: np.ndarray, change: IntensityChange, region: tuple[slice, slice] | None = None
) -> np.ndarray:
    """float32 copy of `image` with `change` applied inside `region` (default: everywhere).

    The mean is taken over the region, so padding outside it stays untouched.
    """
    out = np.array(image, dtype=np.float32)
    if change == IntensityChange():
        return out
    view = out if region is None else out[region]
    mean = float(view.mean())
    view[...] = np.clip((view - mean) * change.factor + mean + change.shift, 0.0, 1.0)
    return out
