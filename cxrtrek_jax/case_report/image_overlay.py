"""Radiographs for the page: downscaled, inlined as PNG data URIs, with boxes drawn in SVG.

An image is loaded with `data_pipeline.files.images.load_image` (PNG, JPEG or
DICOM -> float [H, W] in [0, 1], air dark), shrunk so that its longer side is
at most `max_side` pixels (aspect kept; never enlarged), quantised to 8-bit
grayscale and embedded as ``data:image/png;base64,...``. Boxes are drawn as
an inline SVG layer over the image: the SVG's viewBox is the page image in
pixels, and a box on the 0-100 scale of the image maps to
``x = x1 / 100 * width`` etc., so boxes stay exact whatever the display size.
Model boxes are solid lines in MODEL_BOX_COLOR with their label above the
box; reference boxes are dashed lines in REFERENCE_BOX_COLOR with their label
below the box (inside the box where the label would leave the image).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
from collections.abc import Sequence

import numpy as np

from data_pipeline.schema.boxes import Box
from data_pipeline.files.images import load_image, resize_square

__all__ = [
    "MODEL_BOX_COLOR",
    "REFERENCE_BOX_COLOR",
    "PageImage",
    "OverlayBox",
    "downscale",
    "png_data_uri",
    "load_page_image",
    "page_image",
    "overlay_svg",
]

MODEL_BOX_COLOR = "#ff6d00"  # orange, solid
REFERENCE_BOX_COLOR = "#00b0ff"  # light blue, dashed
_STROKE_PX = 3
_DASH = "9 6"
_FONT_FRACTION = 0.028  # label font size as a fraction of the image height
_MIN_FONT_PX = 6.0
_CHAR_WIDTH = 0.58  # rough width of a label character, in font sizes


@dataclasses.dataclass(frozen=True)
class PageImage:
    """An image ready for the page.

    data_uri: "data:image/png;base64,..." of the 8-bit page image.
    width / height: page image size in pixels; source_width / source_height:
    the size of the file's image.
    """

    data_uri: str
    width: int
    height: int
    source_width: int
    source_height: int


@dataclasses.dataclass(frozen=True)
class OverlayBox:
    """A box to draw: `kind` "model" or "reference", from turn `turn_index`."""

    box: Box
    kind: str
    turn_index: int

    def __post_init__(self) -> None:
        if self.kind not in ("model", "reference"):
            raise ValueError(f"OverlayBox kind must be 'model' or 'reference', got {self.kind!r}")


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """float [H, W] -> float32 [H', W'] with max(H', W') <= max_side, aspect kept.

    Returned unchanged (as float32) when it already fits.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    height, width = image.shape
    longer = max(height, width)
    if longer <= max_side:
        return np.asarray(image, dtype=np.float32)
    scale = max_side / longer
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resize_square(image, size)


def png_data_uri(image: np.ndarray) -> str:
    """float [H, W] in [0, 1] -> data URI of an 8-bit grayscale PNG (round(x * 255))."""
    from PIL import Image

    levels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_page_image(path: str | os.PathLike, max_side: int = 512) -> PageImage:
    """Loads and shrinks one radiograph for the page; ImageLoadError naming the file."""
    return page_image(load_image(path), max_side)


def page_image(image: np.ndarray, max_side: int = 512) -> PageImage:
    """A decoded radiograph (float [H, W] in [0, 1], air dark) shrunk for the page."""
    small = downscale(image, max_side)
    return PageImage(
        data_uri=png_data_uri(small),
        width=small.shape[1],
        height=small.shape[0],
        source_width=image.shape[1],
        source_height=image.shape[0],
    )


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _label_position(item: OverlayBox, width: int, height: int, font_px: float) -> tuple[float, float]:
    """Baseline start (x, y) of a box label: model labels just above the box,
    reference labels just below it, moved inside the box where they would
    leave the image; shifted left where they would run past the right edge."""
    box = item.box
    left, top = box.x1 / 100 * width, box.y1 / 100 * height
    bottom = box.y2 / 100 * height
    if item.kind == "model":
        y = top - 0.25 * font_px if top >= 1.1 * font_px else top + font_px
    else:
        y = bottom + 0.95 * font_px if bottom + font_px <= height else bottom - 0.3 * font_px
    text_width = _CHAR_WIDTH * font_px * len(box.label)
    x = min(left + 0.2 * font_px, width - text_width - 2)
    return max(2.0, x), y


def _color(item: OverlayBox) -> str:
    return MODEL_BOX_COLOR if item.kind == "model" else REFERENCE_BOX_COLOR


def _box_rect(item: OverlayBox, width: int, height: int) -> str:
    box = item.box
    x, y = box.x1 / 100 * width, box.y1 / 100 * height
    w, h = (box.x2 - box.x1) / 100 * width, (box.y2 - box.y1) / 100 * height
    dash = "" if item.kind == "model" else f' stroke-dasharray="{_DASH}"'
    tooltip = html.escape(f"{box.label} ({item.kind}, turn {item.turn_index})")
    return (
        f'<rect class="box {item.kind}" x="{_fmt(x)}" y="{_fmt(y)}" width="{_fmt(w)}" height="{_fmt(h)}" '
        f'fill="none" stroke="{_color(item)}" stroke-width="{_STROKE_PX}" '
        f'vector-effect="non-scaling-stroke"{dash}><title>{tooltip}</title></rect>'
    )


def _box_label(item: OverlayBox, width: int, height: int, font_px: float) -> str:
    x, y = _label_position(item, width, height, font_px)
    return (
        f'<text class="label {item.kind}" x="{_fmt(x)}" y="{_fmt(y)}" font-size="{_fmt(font_px)}" '
        f'fill="{_color(item)}" stroke="#000" stroke-width="{_fmt(font_px * 0.15)}" paint-order="stroke">'
        f"{html.escape(item.box.label)}</text>"
    )


def overlay_svg(image: PageImage, boxes: Sequence[OverlayBox], *, description: str) -> str:
    """Inline SVG: the image with `boxes` drawn over it; `description` labels it for
    screen readers (escaped here)."""
    width, height = image.width, image.height
    font_px = max(_MIN_FONT_PX, height * _FONT_FRACTION)
    parts = [
        f'<svg class="xray" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{html.escape(description)}">',
        f'<image href="{image.data_uri}" x="0" y="0" width="{width}" height="{height}"/>',
    ]
    # Outlines, then labels over every outline; references first, so that model
    # outlines and labels are drawn on top of the reference ones.
    ordered = sorted(boxes, key=lambda b: b.kind == "model")
    parts.extend(_box_rect(item, width, height) for item in ordered)
    parts.extend(_box_label(item, width, height, font_px) for item in ordered)
    parts.append("</svg>")
    return "".join(parts)
