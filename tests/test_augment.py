"""Training augmentation: crop windows, box remapping, intensity changes, seeding."""

import numpy as np
import pytest

from data_pipeline.batches.augment import (
    AugmentConfig,
    CropWindow,
    IntensityChange,
    adjust_intensity,
    crop_image,
    crop_study_boxes,
    remap_box_markup,
    sample_crop,
    sample_intensity,
    study_box_extent,
)
from data_pipeline.schema.boxes import Box, parse_boxes
from data_pipeline.schema.records import QAItem, Study

BOX_ANSWER = "Here: <|ref|> left effusion <|/ref|> <|box|>(60.0, 70.0), (90.0, 95.0)<|/box|> done."


def _study(answer=BOX_ANSWER):
    return Study(
        study_id="s1",
        images=("a.png",),
        items=(
            QAItem(1, "View_Information", "captioning", 1, "<image>\nView?", "PA."),
            QAItem(3, "Findings_Detection", "detection", 1, "Where is <|ref|> it <|/ref|> <|box|>(10, 20), (30, 40)<|/box|>?", answer),
        ),
    )


def test_config_validation_and_identity():
    assert AugmentConfig.none().is_identity and not AugmentConfig().is_identity
    for bad in (dict(crop_area=(0.0, 1.0)), dict(crop_area=(0.9, 1.1)), dict(crop_area=(0.9, 0.8)),
                dict(crop_aspect=(0.0, 1.0)), dict(brightness=-0.1), dict(contrast=1.0)):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_window_rejects_outside_unit_square():
    with pytest.raises(ValueError, match="outside the unit square"):
        CropWindow(0.5, 0.0, 0.6, 1.0)


def test_map_box_is_the_affine_map_of_the_window():
    window = CropWindow(top=0.2, left=0.1, height=0.5, width=0.8)
    mapped = window.map_box(Box("x", 10.0, 20.0, 50.0, 45.0))
    assert mapped == Box("x", 0.0, 0.0, pytest.approx(50.0), pytest.approx(50.0))
    # Parts outside the window are clipped to the 0-100 scale.
    assert window.map_box(Box("x", 0.0, 0.0, 100.0, 100.0)) == Box("x", 0.0, 0.0, 100.0, 100.0)


def test_pixel_bounds_round_outwards_and_snapping_is_exact():
    window = CropWindow(top=0.13, left=0.27, height=0.6, width=0.5)
    y0, y1, x0, x1 = window.pixel_bounds(10, 20)
    assert (y0, y1, x0, x1) == (1, 8, 5, 16)  # rows 1.3..7.3 -> 1..8, cols 5.4..15.4 -> 5..16
    snapped = window.snapped(10, 20)
    assert snapped.pixel_bounds(10, 20) == (1, 8, 5, 16)
    assert (snapped.top, snapped.height, snapped.left, snapped.width) == pytest.approx((0.1, 0.7, 0.25, 0.55))
    image = np.arange(200, dtype=np.float32).reshape(10, 20)
    np.testing.assert_array_equal(crop_image(image, snapped), image[1:8, 5:16])
    assert crop_image(image, CropWindow()).shape == (10, 20)


def test_sample_crop_stays_in_range_and_keeps_the_boxes():
    config = AugmentConfig(crop_area=(0.5, 0.6), crop_aspect=(0.8, 1.25))
    keep = Box("k", 5.0, 80.0, 20.0, 99.0)
    rng = np.random.default_rng(0)
    widened = 0
    for _ in range(200):
        plain = sample_crop(rng, config)
        assert 0.5 - 1e-9 <= plain.height * plain.width <= 0.6 + 1e-9
        assert 0.8 - 1e-9 <= plain.width / plain.height <= 1.25 + 1e-9
        window = sample_crop(rng, config, keep)
        assert window.left <= 0.05 and window.top <= 0.80
        assert window.left + window.width >= 0.20 - 1e-9 and window.top + window.height >= 0.99 - 1e-9
        widened += window.height * window.width > 0.6 + 1e-9
    assert widened > 0  # the keep box really forced some windows wider


def test_sampling_is_reproducible_from_the_generator():
    config = AugmentConfig()
    a = [sample_crop(np.random.default_rng(7), config), sample_intensity(np.random.default_rng(7), config)]
    b = [sample_crop(np.random.default_rng(7), config), sample_intensity(np.random.default_rng(7), config)]
    assert a == b
    assert sample_crop(np.random.default_rng(8), config) != a[0]


def test_remap_box_markup_rewrites_only_box_bodies():
    window = CropWindow(top=0.5, left=0.5, height=0.5, width=0.5)
    out = remap_box_markup(BOX_ANSWER, window)
    assert out == "Here: <|ref|> left effusion <|/ref|> <|box|>(20.0, 40.0), (80.0, 90.0)<|/box|> done."
    assert remap_box_markup("no boxes here", window) == "no boxes here"
    with pytest.raises(ValueError, match="turn 1"):
        remap_box_markup("<|box|>(1, 2)<|/box|>", window, "turn 1")


def test_study_box_extent_and_crop_study_boxes():
    study = _study()
    assert study_box_extent(study) == Box("extent", 10.0, 20.0, 90.0, 95.0)
    assert study_box_extent(_study("No box.").replace(items=_study().items[:1])) is None
    window = CropWindow(top=0.0, left=0.0, height=0.5, width=0.5)
    cropped = crop_study_boxes(study, window)
    assert parse_boxes(cropped.items[1].question) == (Box("it", 20.0, 40.0, 60.0, 80.0),)
    assert cropped.items[1].answer.startswith("Here: <|ref|> left effusion <|/ref|> <|box|>(100.0, 100.0)")
    assert cropped.items[0] == study.items[0] and crop_study_boxes(study, CropWindow()) is study
    bad = study.replace(items=(QAItem(3, "t", "detection", 1, "q", "<|box|>(1, 2), (3)<|/box|>"),))
    with pytest.raises(ValueError, match="study 's1' turn 0 answer"):
        study_box_extent(bad)


def test_adjust_intensity_changes_only_the_region():
    image = np.zeros((6, 6), np.float32)
    image[1:5, 1:5] = np.linspace(0.2, 0.6, 16, dtype=np.float32).reshape(4, 4)
    region = (slice(1, 5), slice(1, 5))
    out = adjust_intensity(image, IntensityChange(shift=0.1, factor=2.0), region)
    content = image[region]
    expected = np.clip((content - content.mean()) * 2.0 + content.mean() + 0.1, 0.0, 1.0)
    np.testing.assert_allclose(out[region], expected, rtol=1e-6)
    assert out[0].sum() == 0 and out[:, 0].sum() == 0  # padding untouched
    assert out.dtype == np.float32 and image[1, 1] == pytest.approx(0.2)  # input not modified
    np.testing.assert_array_equal(adjust_intensity(image, IntensityChange()), image)
    assert adjust_intensity(np.full((2, 2), 0.9, np.float32), IntensityChange(shift=0.5)).max() == 1.0
