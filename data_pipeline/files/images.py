"""Radiograph loading (DICOM, PNG, JPEG) and aspect-preserving resizing.

Every loader returns a float32 [H, W] array in [0, 1] with air dark and bone
bright, whatever the source, or raises `ImageLoadError` naming the file and
the reason.

Format detection is by content: bytes 128..131 equal to ``DICM`` (the DICOM
Part 10 preamble marker) mean DICOM; anything else goes to PIL, which must
identify it as PNG or JPEG. The file name only labels error messages, so a
PNG named ``.dcm`` loads as a PNG, and a DICOM file without the 128-byte
preamble (old ACR-NEMA style) is refused.

DICOM (pydicom; JPEG Lossless decoded by pylibjpeg-libjpeg, JPEG 2000 by
pylibjpeg-openjpeg or Pillow, whichever pydicom picks; both are exact):
  1. stored values, masked to Bits Stored and sign-extended by pydicom;
  2. modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept);
  3. intensity mapping to [0, 1], first that applies:
     - VOI LUT Sequence (first item, `pydicom.pixels.apply_voi`), divided by
       2**b - 1 with b the LUT Descriptor's bits per entry;
     - Window Center and Window Width (both present; first value of each),
       with VOI LUT Function LINEAR (default), LINEAR_EXACT or SIGMOID,
       DICOM PS3.3 C.11.2.1.2, onto [0, 1];
     - otherwise min-max over this image's own values after step 2: the
       smallest value maps to 0 and the largest to 1 (not the nominal
       2**BitsStored range, which would leave typical 12-in-16-bit images
       nearly black);
  4. MONOCHROME1 (high values dark) is inverted: x -> 1 - x. The polarity
     comes from Photometric Interpretation only; Presentation LUT Shape is
     not applied (in DX it restates the same polarity).
  Only MONOCHROME1/MONOCHROME2 single-frame images are accepted.

PNG/JPEG (PIL): 8-bit values are divided by 255, 16-bit grayscale PNG by
65535 (full precision kept). RGB, palette, CMYK and YCbCr images become
luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601) computed in float
(PIL reads 16-bit RGB PNG as 8 bits per channel).
An alpha channel is dropped when every pixel is fully opaque; an image with
any transparent pixel is refused (its colour under transparency is undefined).
EXIF orientation is not applied: pixels come as stored, like `PIL.Image.open`.

Every result is checked: non-empty, finite, and not constant (an image whose
pixels are all equal carries no information and is refused).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence

import numpy as np

from data_pipeline.schema.boxes import Box

__all__ = [
    "ImageLoadError",
    "load_image",
    "load_image_bytes",
    "is_dicom",
    "encode_png16",
    "PadResize",
    "resize_with_pad_params",
    "resize_with_pad",
    "resize_square",
]

_DICOM_MARKER_OFFSET = 128
_DICOM_MARKER = b"DICM"
_PIL_FORMATS = ("PNG", "JPEG", "MPO")  # MPO: multi-picture JPEG from cameras, first picture used.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageLoadError(ValueError):
    """An image file that cannot be loaded; the message names the file and the reason."""


# ----------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Loads a DICOM, PNG or JPEG radiograph as float32 [H, W] in [0, 1], air dark.

    See the module docstring for the exact intensity rules.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ImageLoadError(f"{name}: file not found") from e
    except IsADirectoryError as e:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from e
    except OSError as e:
        raise ImageLoadError(f"{name}: cannot read file: {e}") from e
    return load_image_bytes(data, name)


def load_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Like `load_image`, for the bytes of a file; `name` labels error messages."""
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    if is_dicom(data):
        image = _load_dicom(data, name)
    else:
        image = _load_pil(data, name)
    _check_informative(image, name)
    return image.astype(np.float32)


def is_dicom(data: bytes) -> bool:
    """True when `data` carries the DICOM Part 10 marker ``DICM`` at byte 128."""
    end = _DICOM_MARKER_OFFSET + len(_DICOM_MARKER)
    return data[_DICOM_MARKER_OFFSET:end] == _DICOM_MARKER


def _check_informative(image: np.ndarray, name: str) -> None:
    if image.ndim != 2:
        raise ImageLoadError(f"{name}: expected a 2-D image, got shape {image.shape}")
    if image.size == 0:
        raise ImageLoadError(f"{name}: zero-size image (shape {image.shape})")
    if not np.isfinite(image).all():
        n_bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise ImageLoadError(f"{name}: {n_bad} pixel(s) are NaN or infinite")
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        raise ImageLoadError(f"{name}: constant image (every pixel is {lo}), no information")
    if lo < 0.0 or hi > 1.0:
        raise ImageLoadError(f"{name}: values span [{lo}, {hi}], outside [0, 1]")


# ----------------------------------------------------------------------------- DICOM


def _load_dicom(data: bytes, name: str) -> np.ndarray:
    """DICOM bytes -> float64 [H, W] in [0, 1], air dark."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types for corrupt headers.
        raise ImageLoadError(f"{name}: unreadable DICOM header: {type(e).__name__}: {e}") from e
    _check_dicom_geometry(ds, name)
    try:
        stored = ds.pixel_array
    except Exception as e:  # truncated data, unsupported or corrupt codestream.
        raise ImageLoadError(
            f"{name}: cannot decode DICOM pixel data: {type(e).__name__}: {e}"
        ) from e
    if stored.ndim != 2:
        raise ImageLoadError(f"{name}: expected one 2-D frame, decoded shape {stored.shape}")
    if not np.isfinite(stored).all():
        raise ImageLoadError(f"{name}: DICOM pixel data contains NaN or infinite values")
    try:
        values = apply_modality_lut(stored, ds).astype(np.float64)
        image = _voi_to_unit(values, ds, name)
    except ImageLoadError:
        raise
    except Exception as e:  # malformed LUT/rescale elements.
        raise ImageLoadError(
            f"{name}: cannot apply modality/VOI LUT: {type(e).__name__}: {e}"
        ) from e
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        image = 1.0 - image
    return image


def _check_dicom_geometry(ds, name: str) -> None:
    """Refuses DICOM objects that are not one grayscale frame with pixel data."""
    pixel_elements = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(element in ds for element in pixel_elements):
        raise ImageLoadError(f"{name}: DICOM has no pixel data (not an image object, or truncated)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageLoadError(
            f"{name}: Photometric Interpretation {photometric!r} is not a grayscale "
            "radiograph (expected MONOCHROME1 or MONOCHROME2)"
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames != 1:
        raise ImageLoadError(
            f"{name}: multi-frame DICOM ({n_frames} frames), expected a single frame"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows == 0 or cols == 0:
        raise ImageLoadError(f"{name}: zero-size image (Rows={rows}, Columns={cols})")


def _voi_to_unit(values: np.ndarray, ds, name: str) -> np.ndarray:
    """Modality-LUT output -> [0, 1] by VOI LUT, window, or min-max (module docstring)."""
    from pydicom.pixels import apply_voi

    voi_items = ds.get("VOILUTSequence")
    if voi_items and "LUTDescriptor" in voi_items[0] and "LUTData" in voi_items[0]:
        full_scale = 2 ** int(voi_items[0].LUTDescriptor[2]) - 1
        mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        if mapped.max() > full_scale:
            raise ImageLoadError(
                f"{name}: VOI LUT output {mapped.max():.0f} exceeds the declared "
                f"{voi_items[0].LUTDescriptor[2]} bits per entry"
            )
        return mapped / full_scale
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return _apply_window(values, _first(center), _first(width), function, name)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        raise ImageLoadError(f"{name}: constant image (every pixel is {lo}), no information")
    return (values - lo) / (hi - lo)


def _first(value) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(value[0])
    return float(value)


def _apply_window(
    values: np.ndarray, center: float, width: float, function: str, name: str
) -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2/3) onto [0, 1]; float64 [H, W].

    LINEAR:       0 at x <= c - 0.5 - (w - 1) / 2, 1 at x > c - 0.5 + (w - 1) / 2,
                  else ((x - (c - 0.5)) / (w - 1) + 0.5); requires w >= 1.
    LINEAR_EXACT: 0 at x <= c - w / 2, 1 at x > c + w / 2, else (x - c) / w + 0.5.
    SIGMOID:      1 / (1 + exp(-4 (x - c) / w)).
    LINEAR_EXACT and SIGMOID require w > 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ImageLoadError(f"{name}: Window Width {width} must be > 0 for SIGMOID")
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR":
        if width < 1:
            raise ImageLoadError(f"{name}: Window Width {width} must be >= 1 for LINEAR")
        center, width = center - 0.5, width - 1.0
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ImageLoadError(f"{name}: Window Width {width} must be > 0 for LINEAR_EXACT")
    else:
        raise ImageLoadError(f"{name}: unsupported VOI LUT Function {function!r}")
    low, high = center - width / 2, center + width / 2
    if width == 0:  # LINEAR with w == 1: a pure threshold.
        return (values > high).astype(np.float64)
    ramp = (values - center) / width + 0.5
    return np.where(values <= low, 0.0, np.where(values > high, 1.0, ramp))


# ----------------------------------------------------------------------------- PNG / JPEG


def _load_pil(data: bytes, name: str) -> np.ndarray:
    """PNG/JPEG bytes -> float64 [H, W] in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        pil = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            f"{name}: neither DICOM (no 'DICM' marker at byte {_DICOM_MARKER_OFFSET}) "
            "nor an image PIL can identify"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # corrupt header of a known format.
        raise ImageLoadError(f"{name}: corrupt image header: {e}") from e
    if pil.format not in _PIL_FORMATS:
        raise ImageLoadError(
            f"{name}: unsupported image format {pil.format}; expected PNG, JPEG or DICOM"
        )
    if getattr(pil, "n_frames", 1) != 1 and pil.format == "PNG":
        raise ImageLoadError(f"{name}: animated PNG with {pil.n_frames} frames, expected one image")
    try:
        pil.load()
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt stream.
        raise ImageLoadError(f"{name}: cannot decode {pil.format} data: {e}") from e
    if pil.width == 0 or pil.height == 0:
        raise ImageLoadError(f"{name}: zero-size image ({pil.width}x{pil.height})")
    return _pil_to_unit(pil, name)


def _pil_to_unit(pil, name: str) -> np.ndarray:
    """Decoded PIL image -> float64 luminance [H, W] in [0, 1]."""
    if pil.mode in ("P", "PA"):
        has_alpha = pil.mode == "PA" or "transparency" in pil.info or pil.palette.mode == "RGBA"
        pil = pil.convert("RGBA" if has_alpha else "RGB")
    if pil.mode in ("LA", "La", "RGBA", "RGBa"):
        pil = _drop_opaque_alpha(pil, name)
    mode = pil.mode
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(pil).astype(np.float64) / 65535.0
    if mode == "I":  # how Pillow < 11 opens 16-bit grayscale PNG.
        pixels = np.asarray(pil).astype(np.float64)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ImageLoadError(f"{name}: 32-bit integer pixels outside the 16-bit range")
        return pixels / 65535.0
    if mode == "1":
        return np.asarray(pil).astype(np.float64)
    if mode == "L":
        return np.asarray(pil).astype(np.float64) / 255.0
    if mode != "RGB":
        try:
            pil = pil.convert("RGB")
        except ValueError as e:
            raise ImageLoadError(f"{name}: unsupported PIL mode {mode!r}") from e
    return (np.asarray(pil).astype(np.float64) / 255.0) @ _LUMA_WEIGHTS


def _drop_opaque_alpha(pil, name: str):
    """Returns `pil` without its alpha band; refuses any transparent pixel."""
    if pil.mode in ("La", "RGBa"):  # premultiplied: un-premultiply first.
        pil = pil.convert(pil.mode.upper())
    alpha = np.asarray(pil.getchannel("A"))
    n_transparent = int(np.count_nonzero(alpha != 255))
    if n_transparent:
        raise ImageLoadError(
            f"{name}: {n_transparent} pixel(s) are not fully opaque; images with transparency "
            "are refused (the colour under transparent pixels is undefined)"
        )
    return pil.convert("L" if pil.mode == "LA" else "RGB")


# ----------------------------------------------------------------------------- encoding


def encode_png16(image: np.ndarray) -> bytes:
    """[H, W] floats in [0, 1] -> 16-bit grayscale PNG bytes.

    Pixels are stored as round(x * 65535); `load_image_bytes` divides by
    65535, so a round trip changes each value by at most 0.5 / 65535 and is
    exact for values already on the 1/65535 grid.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"encode_png16: expected a non-empty [H, W] image, got {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("encode_png16: image has NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"encode_png16: values span [{lo}, {hi}], outside [0, 1]")
    levels = np.rint(image.astype(np.float64) * 65535.0).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- resizing


@dataclasses.dataclass(frozen=True)
class PadResize:
    """Geometry of `resize_with_pad`: source [H, W] -> content [content_h, content_w]
    placed at (offset_y, offset_x) in an [out_h, out_w] canvas.

    A point at continuous pixel coordinate (y, x) of the source (pixel edges,
    0..H and 0..W) lands at (y * scale_y + offset_y, x * scale_x + offset_x)
    on the canvas, with scale_y = content_h / H and scale_x = content_w / W.
    """

    src_h: int
    src_w: int
    content_h: int
    content_w: int
    offset_y: int
    offset_x: int
    out_h: int
    out_w: int

    @property
    def scale_y(self) -> float:
        return self.content_h / self.src_h

    @property
    def scale_x(self) -> float:
        return self.content_w / self.src_w

    def box_to_output(self, box: Box) -> Box:
        """A box on the source's 0-100 scale -> the same region on the canvas's 0-100 scale."""
        return self._map_box(box, _percent_to_output)

    def box_to_source(self, box: Box) -> Box:
        """Inverse of `box_to_output`; parts in the padding are clipped to the image (0-100)."""
        return self._map_box(box, _percent_to_source)

    def _map_box(self, box: Box, along_axis) -> Box:
        """Applies `along_axis(v, content, offset, out)` to each coordinate of `box`."""

        def x(v: float) -> float:
            return along_axis(v, self.content_w, self.offset_x, self.out_w)

        def y(v: float) -> float:
            return along_axis(v, self.content_h, self.offset_y, self.out_h)

        return Box(box.label, x(box.x1), y(box.y1), x(box.x2), y(box.y2))


def _percent_to_output(v: float, content: int, offset: int, out: int) -> float:
    """0-100 position along one source axis -> 0-100 position along the canvas axis."""
    return (v / 100 * content + offset) / out * 100


def _percent_to_source(v: float, content: int, offset: int, out: int) -> float:
    """Inverse of `_percent_to_output`, clipped to [0, 100]."""
    return min(100.0, max(0.0, (v / 100 * out - offset) / content * 100))


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """S or (H', W') -> (H', W'), both >= 1."""
    out_h, out_w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize target must be positive, got {size!r}")
    return out_h, out_w


def resize_with_pad_params(shape: tuple[int, ...], size: int | tuple[int, int]) -> PadResize:
    """Geometry for fitting an image of `shape` ([H, W, ...]) into `size` (S or (H', W')).

    s = min(H'/H, W'/W); content = (max(1, round(H s)), max(1, round(W s)));
    offsets = floor((target - content) / 2), so an odd leftover pixel of
    padding goes to the bottom/right.
    """
    src_h, src_w = int(shape[0]), int(shape[1])
    if src_h < 1 or src_w < 1:
        raise ValueError(f"cannot resize an empty image of shape {tuple(shape)}")
    out_h, out_w = _size_hw(size)
    scale = min(out_h / src_h, out_w / src_w)
    content_h = min(out_h, max(1, round(src_h * scale)))
    content_w = min(out_w, max(1, round(src_w * scale)))
    return PadResize(
        src_h=src_h,
        src_w=src_w,
        content_h=content_h,
        content_w=content_w,
        offset_y=(out_h - content_h) // 2,
        offset_x=(out_w - content_w) // 2,
        out_h=out_h,
        out_w=out_w,
    )


def _resize_float(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Antialiased resize of float [H, W]: PIL mode "F", BILINEAR (triangle filter
    widened by the scale factor when shrinking). A convex filter, so the output
    stays within the input's value range. Identity when the size is unchanged."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a [H, W] image, got shape {image.shape}")
    if image.shape == (out_h, out_w):
        return image.copy()
    resized = Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), image.min(), image.max())


def resize_with_pad(
    image: np.ndarray, size: int | tuple[int, int], pad_value: float = 0.0
) -> np.ndarray:
    """Aspect-preserving resize of float [H, W] into `size`, centred and padded.

    Returns float32 [S, S] or [H', W']. Geometry: `resize_with_pad_params`;
    filter: PIL "F" BILINEAR, antialiased (see `_resize_float`). Padding is
    `pad_value` (0.0 = black, like air). Deterministic.
    """
    params = resize_with_pad_params(np.shape(image), size)
    content = _resize_float(image, params.content_h, params.content_w)
    canvas = np.full((params.out_h, params.out_w), pad_value, dtype=np.float32)
    canvas[
        params.offset_y : params.offset_y + params.content_h,
        params.offset_x : params.offset_x + params.content_w,
    ] = content
    return canvas


def resize_square(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Plain (aspect-changing) resize of float [H, W] to float32 [S, S] or [H', W'].

    Same filter as `resize_with_pad` (PIL "F" BILINEAR, antialiased); matches
    image processors that stretch to a square.
    """
    out_h, out_w = _size_hw(size)
    return _resize_float(image, out_h, out_w)
