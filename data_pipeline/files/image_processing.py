"""A checkpoint's image preprocessing: radiograph [H, W] in [0, 1] -> the model's S x S input.

One typed, frozen `ImageProcessing` says how an image is fitted to the vision tower's square
input and how the tower normalises it. Three kinds:

  * "pad" (ours, `ImageProcessing.ours`): `images.resize_with_pad` (aspect kept, longest side S,
    PIL "F" BILINEAR on floats, centred on black); one mean and std for all channels (the
    tower's `pixel_mean` / `pixel_std`). The default for models trained here.
  * "shortest_edge_center_crop" (`CLIPImageProcessor`, as llava-hf/llava-1.5-*-hf publish it):
    the short side resized to `resize_to`, the long side to int(resize_to * long / short)
    (truncated, as transformers' `get_resize_output_image_size`), then a centred S x S crop at
    top = (h - S) // 2, left = (w - S) // 2.
  * "resize" (`Gemma3ImageProcessor` of Gemma 3 / MedGemma, `SiglipImageProcessor`): resized to
    S x S whatever the aspect (squashed).

The last two reproduce transformers' PIL image processors (the `backend="pil"` classes, which
`AutoImageProcessor` returns when torchvision is not installed): they convert the image to 8-bit
RGB and resize it with PIL (`resample`: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box,
5 hamming), then rescale by 1/255 (in float64, stored as float32) and normalise per channel in
float32. A radiograph is gray, so its three channels are equal; `fit` resizes the one gray
channel with PIL's same 8-bit filter. `do_convert_rgb` true converts a gray PIL image to RGB;
false or null (Gemma 3 publishes null) keeps the image's channels, so the processor must be
given the radiograph as RGB (three equal channels; as a gray "L" image it fails on the
3-channel mean); either way the pixels are those reproduced here. `fit` first quantises our float image to 8 bits,
round(255 x), because that is the image the Hugging Face processor sees: for an 8-bit PNG/JPEG
(loaded as k / 255) this gives back the file's own values; a 16-bit PNG or a DICOM loses its
extra precision here, as it would when handed to the processor as an 8-bit PIL image.

Our own LLaVA export writes a `JanusImageProcessor` (the closest Hugging Face processor to ours,
`cxrtrek_jax.hf.llava_family`); `from_preprocessor_config` reads that form back as "pad" with the
normalisation it encodes, since the model was trained with ours.

`ImageProcessing.from_preprocessor_config(path)` reads a `preprocessor_config.json` and refuses,
naming the file and the key, every setting it does not reproduce (pan and scan, padding,
`crop_pct`, a rescale factor other than 1/255, a missing key whose class default would be
guessed, an unknown key or image processor type): nothing is silently approximated.
`pixel_values(fitted)` gives float32 [3, S, S] as the Hugging Face processor's `pixel_values`
for the same image (within float32 rounding: 1e-5 is checked in tests/test_image_processing.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipeline.files.images import resize_with_pad

__all__ = [
    "PROCESSING_KINDS",
    "RESAMPLE_FILTERS",
    "ImageProcessing",
    "model_input",
    "quantize_8bit",
]

PROCESSING_KINDS = ("pad", "shortest_edge_center_crop", "resize")
# PIL resampling filters by the integer code transformers stores in `resample`.
RESAMPLE_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The one rescale factor reproduced: 8-bit levels to [0, 1], as transformers writes it (1 / 255).
_RESCALE_FACTOR = 1 / 255
# Keys that name the processor or feed the text processor, not the pixels; accepted and unused.
_NAME_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type", "image_seq_length")
_CLIP_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
              "do_normalize", "image_mean", "image_std", "do_convert_rgb")
_SQUARE_KEYS = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_convert_rgb")
_PAN_AND_SCAN_KEYS = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                      "pan_and_scan_min_ratio_to_activate")
# Keys that may be absent: they cannot change the pixels of a gray image or are off when absent.
_OPTIONAL_KEYS = ("do_convert_rgb",) + _PAN_AND_SCAN_KEYS
# image_processor_type -> (kind, the keys it reads). The "Pil" names are transformers 5's PIL classes.
_PROCESSOR_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "CLIPImageProcessor": ("shortest_edge_center_crop", _CLIP_KEYS),
    "CLIPImageProcessorPil": ("shortest_edge_center_crop", _CLIP_KEYS),
    "Gemma3ImageProcessor": ("resize", _SQUARE_KEYS + _PAN_AND_SCAN_KEYS),
    "Gemma3ImageProcessorPil": ("resize", _SQUARE_KEYS + _PAN_AND_SCAN_KEYS),
    "SiglipImageProcessor": ("resize", _SQUARE_KEYS),
    "SiglipImageProcessorPil": ("resize", _SQUARE_KEYS),
}
# What our LLaVA export writes (`cxrtrek_jax.hf.llava_family.image_processor_options`): read back as "pad".
_JANUS_TYPES = ("JanusImageProcessor", "JanusImageProcessorPil")
_JANUS_KEYS = ("do_resize", "size", "min_size", "resample", "do_pad", "background_color", "do_rescale",
               "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def quantize_8bit(image: np.ndarray) -> np.ndarray:
    """float [H, W] in [0, 1] -> uint8 [H, W], round(255 x) (half to even, `np.rint`)."""
    return np.rint(np.asarray(image, dtype=np.float64) * 255.0).astype(np.uint8)


def model_input(image: np.ndarray, image_size: int, processing: "ImageProcessing | None" = None) -> np.ndarray:
    """float [H, W] in [0, 1] -> the model's float32 [S, S] input (S = image_size): `processing.fit`,
    or without one ours (`resize_with_pad`). ValueError when `processing` is for another size."""
    if processing is None:
        return resize_with_pad(image, image_size)
    if processing.size != image_size:
        raise ValueError(f"the image processing ({processing.source}) makes {processing.size}x{processing.size} "
                         f"images, the model takes {image_size}x{image_size}")
    return processing.fit(image)


def _check_unit_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"ImageProcessing.fit: expected a non-empty [H, W] image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("ImageProcessing.fit: the image has NaN or infinite pixels")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"ImageProcessing.fit: pixel values span [{lo}, {hi}], outside [0, 1]")
    return image


@dataclasses.dataclass(frozen=True)
class ImageProcessing:
    """How an image becomes the vision tower's input (see the module docstring).

    kind: one of `PROCESSING_KINDS`.
    size: S, the side of the square model input in pixels.
    resize_to: "shortest_edge_center_crop": the short side after resizing (>= size, cropped to
        size after); the other kinds: equal to size.
    resample: PIL filter name (a value of `RESAMPLE_FILTERS`); "pad" always uses "bilinear"
        (on floats, antialiased).
    channel_mean, channel_std: per-channel normalisation (R, G, B) of [0, 1] pixels,
        (x - mean_c) / std_c, applied by the vision tower (`VisionConfig.channel_mean/std`).
    source: where this came from (a preprocessor_config.json path, or "ours"); shown to users.
    """

    kind: str
    size: int
    resize_to: int
    resample: str
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    source: str = "ours"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mean", tuple(float(v) for v in self.channel_mean))
        object.__setattr__(self, "channel_std", tuple(float(v) for v in self.channel_std))
        if self.kind not in PROCESSING_KINDS:
            raise ValueError(f"ImageProcessing.kind must be one of {PROCESSING_KINDS}, got {self.kind!r}")
        for name in ("size", "resize_to"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImageProcessing.{name} must be a positive integer, got {value!r}")
        if self.kind == "shortest_edge_center_crop" and self.resize_to < self.size:
            raise ValueError(f"ImageProcessing.resize_to ({self.resize_to}) must be at least size ({self.size}): "
                             "the centre crop would pad")
        if self.kind != "shortest_edge_center_crop" and self.resize_to != self.size:
            raise ValueError(f"ImageProcessing.resize_to ({self.resize_to}) must equal size ({self.size}) "
                             f"for kind {self.kind!r}")
        if self.resample not in RESAMPLE_FILTERS.values():
            raise ValueError(f"ImageProcessing.resample must be one of {tuple(RESAMPLE_FILTERS.values())}, "
                             f"got {self.resample!r}")
        if self.kind == "pad" and self.resample != "bilinear":
            raise ValueError(f"ImageProcessing kind 'pad' resizes with 'bilinear', got {self.resample!r}")
        for name in ("channel_mean", "channel_std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"ImageProcessing.{name} must be 3 finite numbers (R, G, B), got {values!r}")
        if min(self.channel_std) <= 0:
            raise ValueError(f"ImageProcessing.channel_std must be > 0, got {self.channel_std}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def ours(cls, size: int, mean: float, std: float) -> "ImageProcessing":
        """The preprocessing of models trained here: resize with pad to `size`, then (x - mean) / std
        on every channel (pass the vision tower's `pixel_mean`, `pixel_std`)."""
        return cls("pad", size, size, "bilinear", (mean,) * 3, (std,) * 3, "ours")

    @classmethod
    def from_preprocessor_config(cls, path: str | os.PathLike) -> "ImageProcessing":
        """The preprocessing a Hugging Face `preprocessor_config.json` describes; ValueError naming
        the file and the key for every setting not reproduced (module docstring)."""
        name = os.fspath(path)
        try:
            with open(name, encoding="utf-8") as f:
                config = json.load(f)
        except FileNotFoundError as e:
            raise ValueError(f"{name}: file not found") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON: {e}") from e
        if not isinstance(config, dict):
            raise ValueError(f"{name}: expected a JSON object, got {type(config).__name__}")
        return _from_config(config, name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageProcessing":
        """Inverse of `to_dict`; ValueError naming a missing or unknown key."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        missing = [f for f in fields if f not in data and f != "source"]
        if unknown or missing:
            raise ValueError(f"ImageProcessing.from_dict: unknown keys {unknown}, missing keys {missing}")
        return cls(**{k: (tuple(v) if k.startswith("channel_") else v) for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    # ------------------------------------------------------------------ applying

    def fit(self, image: np.ndarray) -> np.ndarray:
        """float [H, W] in [0, 1] (`images.load_image`) -> float32 [S, S] in [0, 1], the model input.

        "pad": `resize_with_pad` on floats. Otherwise quantised to 8 bits first (the image the
        Hugging Face processor sees), resized with PIL's 8-bit filter, centre-cropped
        ("shortest_edge_center_crop"), and rescaled as transformers does: float32(q * (1/255))
        computed in float64.
        """
        image = _check_unit_image(image)
        if self.kind == "pad":
            return resize_with_pad(image, self.size)
        from PIL import Image

        levels = Image.fromarray(quantize_8bit(image))  # mode "L"
        out_h, out_w = self.resized_shape(image.shape)
        resized = np.asarray(levels.resize((out_w, out_h), Image.Resampling[self.resample.upper()]))
        top, left = (out_h - self.size) // 2, (out_w - self.size) // 2
        cropped = resized[top : top + self.size, left : left + self.size]
        return (cropped.astype(np.float64) * _RESCALE_FACTOR).astype(np.float32)

    def resized_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(h, w) after the resize step, before any crop, for a source of `shape` [H, W, ...]
        ("pad": the padded canvas, S x S)."""
        height, width = int(shape[0]), int(shape[1])
        if height < 1 or width < 1:
            raise ValueError(f"cannot resize an empty image of shape {tuple(shape)}")
        if self.kind != "shortest_edge_center_crop":
            return self.size, self.size
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize_to * long / short)
        return (new_long, self.resize_to) if width <= height else (self.resize_to, new_long)

    def pixel_values(self, fitted: np.ndarray) -> np.ndarray:
        """float32 [S, S] from `fit` -> float32 [3, S, S], (x - mean_c) / std_c in float32, as the
        Hugging Face processor normalises (the vision tower folds the same into its patch kernel)."""
        fitted = np.asarray(fitted, dtype=np.float32)
        if fitted.shape != (self.size, self.size):
            raise ValueError(f"pixel_values: expected a fitted [{self.size}, {self.size}] image, got {fitted.shape}")
        mean = np.asarray(self.channel_mean, np.float32)[:, None, None]
        std = np.asarray(self.channel_std, np.float32)[:, None, None]
        return (fitted[None] - mean) / std

    def describe(self) -> str:
        """One line for the console: what is done to an image, and where that came from."""
        if self.kind == "pad":
            geometry = f"resize with pad to {self.size}x{self.size}"
        elif self.kind == "resize":
            geometry = f"resize ({self.resample}) to {self.size}x{self.size}, aspect not kept"
        else:
            geometry = (f"short side to {self.resize_to} ({self.resample}), "
                        f"centre crop {self.size}x{self.size}")
        return (f"{geometry}; normalise mean {list(self.channel_mean)} std {list(self.channel_std)} "
                f"(from {self.source})")


# ----------------------------------------------------------------------------- preprocessor_config.json


def _refuse(path: str, key: str, reason: str) -> ValueError:
    return ValueError(f"{path}: {key}: {reason}; this image preprocessing is not reproduced, so the "
                      "checkpoint is refused rather than fed different pixels than it was trained on")


def _from_config(config: Mapping[str, Any], path: str) -> ImageProcessing:
    processor_type = config.get("image_processor_type")
    if processor_type in _JANUS_TYPES:
        return _ours_from_janus(config, path)
    if processor_type not in _PROCESSOR_TYPES:
        raise _refuse(path, "image_processor_type",
                      f"{processor_type!r} is not one of {sorted([*_PROCESSOR_TYPES, *_JANUS_TYPES])}")
    kind, keys = _PROCESSOR_TYPES[processor_type]
    unknown = sorted(set(config) - set(keys) - set(_NAME_KEYS))
    if unknown:
        raise _refuse(path, unknown[0], f"key not known for {processor_type} (unknown keys: {unknown})")
    for key in keys:
        if key not in config and key not in _OPTIONAL_KEYS:
            raise _refuse(path, key, f"missing (the {processor_type} class default is not assumed)")
    _require_true(config, path, "do_resize", "images would keep their own size")
    _require_true(config, path, "do_rescale", "pixels would stay 0..255")
    if config.get("do_convert_rgb") is not None:  # null (Gemma 3's file): the image's own channels.
        _require_bool(config, path, "do_convert_rgb")
    if not math.isclose(_number(config, path, "rescale_factor"), _RESCALE_FACTOR, rel_tol=1e-12):
        raise _refuse(path, "rescale_factor", f"{config['rescale_factor']!r}, only 1/255 is reproduced")
    resample = config["resample"]
    if isinstance(resample, bool) or resample not in RESAMPLE_FILTERS:
        raise _refuse(path, "resample", f"{resample!r} is not a PIL filter code {sorted(RESAMPLE_FILTERS)}")
    if config.get("do_pan_and_scan"):
        raise _refuse(path, "do_pan_and_scan", "pan and scan (extra crops per image) is on")
    mean, std = _normalisation(config, path)
    if kind == "shortest_edge_center_crop":
        resize_to = _size_entry(config, path, "size", ("shortest_edge",))
        _require_true(config, path, "do_center_crop", "the resized image would not be square")
        size = _square(config, path, "crop_size")
        if size > resize_to:
            raise _refuse(path, "crop_size", f"{size} is larger than size.shortest_edge {resize_to} (the crop pads)")
    else:
        size = resize_to = _square(config, path, "size")
    return ImageProcessing(kind, size, resize_to, RESAMPLE_FILTERS[resample], mean, std, path)


def _ours_from_janus(config: Mapping[str, Any], path: str) -> ImageProcessing:
    """Our own LLaVA export's `JanusImageProcessor` -> `ImageProcessing.ours` with the tower's
    pixel_mean / pixel_std it encodes: (x * rescale_factor - image_mean) / image_std equals
    (x / 255 - pixel_mean) / pixel_std with pixel_std = image_std / (255 * rescale_factor) and
    pixel_mean = image_mean / (255 * rescale_factor) (both rounded to 12 significant digits, which
    undoes the float rounding of the export's division). Only that export's form is accepted:
    longest side to S (min_size 1), BILINEAR, centred black padding (background_color 0), one
    mean and std for all channels; anything else (a Janus model's own processor) is refused.
    The processor resizes 8-bit images where we resize floats: the model was trained with ours."""
    unknown = sorted(set(config) - set(_JANUS_KEYS) - set(_NAME_KEYS))
    if unknown:
        raise _refuse(path, unknown[0], f"key not known for our exported JanusImageProcessor (unknown keys: {unknown})")
    for key in _JANUS_KEYS:
        if key not in config and key not in ("background_color", "do_convert_rgb"):
            raise _refuse(path, key, "missing (the JanusImageProcessor class default is not assumed)")
    for key, consequence in (("do_resize", "images would keep their own size"), ("do_pad", "not padded to a square"),
                             ("do_rescale", "pixels would stay 0..255"), ("do_normalize", "not our export's form")):
        _require_true(config, path, key, consequence)
    if config["min_size"] != 1 or isinstance(config["min_size"], bool):
        raise _refuse(path, "min_size", f"{config['min_size']!r}, our export writes 1")
    if config["resample"] != 2 or isinstance(config["resample"], bool):
        raise _refuse(path, "resample", f"{config['resample']!r}, our export writes 2 (bilinear)")
    size = _square(config, path, "size")
    mean, std = _normalisation(config, path)
    if len(set(mean)) != 1 or len(set(std)) != 1:
        raise _refuse(path, "image_mean", f"{mean} / {std}: our export writes one value for all channels")
    background = config.get("background_color", [int(255 * m) for m in mean])
    if background != [0, 0, 0]:
        raise _refuse(path, "background_color", f"{background!r}, our export pads black ([0, 0, 0])")
    per_level = 255.0 * _number(config, path, "rescale_factor")
    if per_level <= 0:
        raise _refuse(path, "rescale_factor", f"{config['rescale_factor']!r} must be > 0")
    pixel_mean, pixel_std = (float(f"{v / per_level:.12g}") for v in (mean[0], std[0]))
    return dataclasses.replace(ImageProcessing.ours(size, pixel_mean, pixel_std), source=path)


def _require_bool(config: Mapping[str, Any], path: str, key: str) -> bool:
    if not isinstance(config[key], bool):
        raise _refuse(path, key, f"expected true or false, got {config[key]!r}")
    return config[key]


def _require_true(config: Mapping[str, Any], path: str, key: str, consequence: str) -> None:
    if not _require_bool(config, path, key):
        raise _refuse(path, key, f"false ({consequence})")


def _number(config: Mapping[str, Any], path: str, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _refuse(path, key, f"expected a finite number, got {value!r}")
    return float(value)


def _normalisation(config: Mapping[str, Any], path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel; do_normalize false = mean 0, std 1."""
    if not _require_bool(config, path, "do_normalize"):
        return (0.0,) * 3, (1.0,) * 3
    values = []
    for key in ("image_mean", "image_std"):
        value = config[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in value)):
            raise _refuse(path, key, f"expected 3 finite numbers (R, G, B), got {config[key]!r}")
        values.append(tuple(float(v) for v in value))
    if min(values[1]) <= 0:
        raise _refuse(path, "image_std", f"{config['image_std']!r} has a value <= 0")
    return values[0], values[1]


def _size_entry(config: Mapping[str, Any], path: str, key: str, entries: tuple[str, ...]) -> int:
    """The single entry of a size dict with exactly `entries` keys (one entry)."""
    value = config[key]
    if not isinstance(value, dict) or sorted(value) != sorted(entries):
        raise _refuse(path, key, f"{value!r}: expected {{{', '.join(repr(e) + ': N' for e in entries)}}}")
    (side,) = (value[e] for e in entries)
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise _refuse(path, key, f"{value!r}: sizes must be positive integers")
    return side


def _square(config: Mapping[str, Any], path: str, key: str) -> int:
    """S of a {"height": S, "width": S} entry; refuses other forms and non-square sizes."""
    value = config[key]
    if not isinstance(value, dict) or sorted(value) != ["height", "width"]:
        raise _refuse(path, key, f"{value!r}: expected {{'height': S, 'width': S}}")
    height, width = value["height"], value["width"]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (height, width)):
        raise _refuse(path, key, f"{value!r}: sizes must be positive integers")
    if height != width:
        raise _refuse(path, key, f"{value!r}: not square (the vision tower takes S x S images)")
    return height
