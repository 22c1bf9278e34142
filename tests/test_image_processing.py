"""`ImageProcessing` against transformers' own image processors and vision tower.

The references are independent: `CLIPImageProcessor` / `Gemma3ImageProcessor` / `SiglipImageProcessor`
(transformers' PIL classes, what `AutoImageProcessor` returns without torchvision) built from the
`preprocessor_config.json` files llava-hf/llava-1.5-7b-hf and google/gemma-3-4b-it (also
google/medgemma-4b-it) publish, key for key (sizes shrunk where a test says so), fed the same
non-square 8-bit gray PNG files; and `transformers.SiglipVisionModel` fed their `pixel_values`.
"""

import copy
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline.files.image_processing import ImageProcessing, quantize_8bit
from data_pipeline.files.images import load_image, resize_with_pad

# preprocessor_config.json of llava-hf/llava-1.5-7b-hf, as published.
LLAVA_15 = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
# preprocessor_config.json of google/gemma-3-4b-it (and google/medgemma-4b-it), as published.
GEMMA_3 = {
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_pan_and_scan": None,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Gemma3ImageProcessor",
    "image_seq_length": 256,
    "image_std": [0.5, 0.5, 0.5],
    "pan_and_scan_max_num_crops": None,
    "pan_and_scan_min_crop_size": None,
    "pan_and_scan_min_ratio_to_activate": None,
    "processor_class": "Gemma3Processor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 896, "width": 896},
}
# The SigLIP processor (as google/siglip-* publish it: bicubic, squashed to the square).
SIGLIP = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor",
    "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384},
}
SHAPES = [(100, 75), (75, 130)]  # [H, W], portrait and landscape


def shrunk(config: dict, size: int) -> dict:
    """The same keys with an S x S model input (CLIP: short side S + 5, cropped to S: an odd margin)."""
    config = copy.deepcopy(config)
    if "crop_size" in config:
        config["crop_size"] = {"height": size, "width": size}
        config["size"] = {"shortest_edge": size + 5}
    else:
        config["size"] = {"height": size, "width": size}
    return config


def write_config(tmp_path, config: dict, name="preprocessor_config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def gray_png(tmp_path, shape, seed) -> str:
    """An 8-bit gray PNG [H, W]: a smooth ramp (interpolation at work) plus noise (every level)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ramp = np.add.outer(np.linspace(0, 180, h), np.linspace(0, 60, w))
    levels = np.clip(ramp + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    path = tmp_path / f"gray_{h}x{w}_{seed}.png"
    Image.fromarray(levels).save(path)
    return str(path)


def hf_pixel_values(config_path, png: str) -> np.ndarray:
    """transformers' pixel_values [3, S, S] for the PNG file, as a user would call the processor."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(config_path.parent))
    assert processor.backend == "pil", type(processor)
    image = Image.open(png)
    if not processor.do_convert_rgb:  # Gemma 3's null: the processor takes the channels it is given.
        image = image.convert("RGB")
    return processor(images=image, return_tensors="np")["pixel_values"][0]


# ----------------------------------------------------------------------------- pixel values


@pytest.mark.parametrize("config, size", [(LLAVA_15, 336), (LLAVA_15, 30), (GEMMA_3, 896), (GEMMA_3, 24),
                                          (SIGLIP, 24)],
                         ids=["llava15-336", "llava15-30", "gemma3-896", "gemma3-24", "siglip-24"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pixel_values_equal_the_hf_processor_on_non_square_images(tmp_path, config, size, shape):
    path = write_config(tmp_path, shrunk(config, size) if size != (config.get("crop_size") or config["size"])["height"]
                        else config)
    png = gray_png(tmp_path, shape, seed=size)
    processing = ImageProcessing.from_preprocessor_config(path)
    fitted = processing.fit(load_image(png))
    assert fitted.shape == (size, size) and fitted.dtype == np.float32
    assert 0.0 <= fitted.min() and fitted.max() <= 1.0
    ours = processing.pixel_values(fitted)
    theirs = hf_pixel_values(path, png)
    assert ours.shape == theirs.shape == (3, size, size)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_kinds_and_geometry_read_from_the_published_files(tmp_path):
    clip = ImageProcessing.from_preprocessor_config(write_config(tmp_path, LLAVA_15, "clip.json"))
    assert (clip.kind, clip.size, clip.resize_to, clip.resample) == ("shortest_edge_center_crop", 336, 336, "bicubic")
    assert clip.channel_mean == (0.48145466, 0.4578275, 0.40821073)
    assert clip.channel_std == (0.26862954, 0.26130258, 0.27577711)
    assert clip.source.endswith("clip.json")
    # Short side 336, long side int(336 * 130 / 75) = 582 (truncated), then the centre crop.
    assert clip.resized_shape((75, 130)) == (336, 582)
    assert clip.resized_shape((130, 75)) == (582, 336)
    gemma = ImageProcessing.from_preprocessor_config(write_config(tmp_path, GEMMA_3, "gemma.json"))
    assert (gemma.kind, gemma.size, gemma.resample, gemma.channel_mean) == ("resize", 896, "bilinear", (0.5,) * 3)
    assert gemma.resized_shape((75, 130)) == (896, 896)
    assert clip.describe().startswith("short side to 336 (bicubic), centre crop 336x336; normalise mean [0.48145466")
    assert gemma.describe().endswith(f"(from {gemma.source})")


def test_center_crop_keeps_the_middle_of_the_long_side(tmp_path):
    """Hand-derived: a 10 x 41 image whose columns are 0..40 (as levels 0, 6, ..., 240); short side kept
    at 10 (no resampling), the centre 10 x 10 crop starts at column (41 - 10) // 2 = 15."""
    config = dict(shrunk(LLAVA_15, 10), size={"shortest_edge": 10})
    processing = ImageProcessing.from_preprocessor_config(write_config(tmp_path, config))
    levels = np.tile(np.arange(41) * 6, (10, 1))
    fitted = processing.fit(levels / 255.0)
    np.testing.assert_array_equal(np.rint(fitted * 255), np.tile(np.arange(15, 25) * 6, (10, 1)))


def test_fit_quantises_to_8_bits_as_the_processor_sees_the_image():
    processing = ImageProcessing("resize", 4, 4, "nearest", (0.5,) * 3, (0.5,) * 3, "test")
    image = np.full((4, 4), 100.4 / 255)
    image[0, 0] = 0.0
    np.testing.assert_array_equal(quantize_8bit(image)[1:, 1:], 100)
    assert processing.fit(image)[1, 1] == np.float32(100 / 255)


def test_ours_is_resize_with_pad_and_the_towers_scalar_normalisation():
    rng = np.random.default_rng(0)
    image = rng.random((100, 75)).astype(np.float32)
    processing = ImageProcessing.ours(32, mean=0.5, std=0.25)
    fitted = processing.fit(image)
    np.testing.assert_array_equal(fitted, resize_with_pad(image, 32))
    np.testing.assert_allclose(processing.pixel_values(fitted), np.stack([(fitted - 0.5) / 0.25] * 3), rtol=0, atol=1e-6)


def test_json_round_trip(tmp_path):
    for processing in (ImageProcessing.from_preprocessor_config(write_config(tmp_path, LLAVA_15)),
                       ImageProcessing.ours(64, mean=0.5, std=0.5)):
        data = json.loads(json.dumps(processing.to_dict()))
        assert ImageProcessing.from_dict(data) == processing
    with pytest.raises(ValueError, match="unknown keys \\['crop'\\]"):
        ImageProcessing.from_dict({**ImageProcessing.ours(8, 0.5, 0.5).to_dict(), "crop": 1})


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("base, change, key", [
    (GEMMA_3, {"do_pan_and_scan": True}, "do_pan_and_scan"),
    (GEMMA_3, {"size": {"height": 896, "width": 448}}, "size"),
    (LLAVA_15, {"do_pad": True}, "do_pad"),
    (LLAVA_15, {"crop_pct": 0.9}, "crop_pct"),
    (LLAVA_15, {"rescale_factor": 1 / 127.5}, "rescale_factor"),
    (LLAVA_15, {"do_center_crop": False}, "do_center_crop"),
    (LLAVA_15, {"do_resize": False}, "do_resize"),
    (LLAVA_15, {"do_rescale": False}, "do_rescale"),
    (LLAVA_15, {"size": {"height": 336, "width": 336}}, "size"),
    (LLAVA_15, {"size": {"shortest_edge": 300}}, "crop_size"),
    (LLAVA_15, {"resample": 7}, "resample"),
    (LLAVA_15, {"image_mean": [0.5, 0.5]}, "image_mean"),
    (LLAVA_15, {"image_processor_type": "LlavaNextImageProcessor"}, "image_processor_type"),
    (LLAVA_15, {"image_processor_type": "ViTImageProcessor"}, "image_processor_type"),
])
def test_refuses_what_is_not_reproduced_by_file_and_key(tmp_path, base, change, key):
    path = write_config(tmp_path, {**base, **change})
    with pytest.raises(ValueError) as error:
        ImageProcessing.from_preprocessor_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}:"), message


@pytest.mark.parametrize("pixel_mean, pixel_std", [(0.5, 0.5), (0.45, 0.25), (0.0, 1.0)])
def test_our_llava_exports_processor_reads_back_as_ours(tmp_path, pixel_mean, pixel_std):
    """What `export-hf` writes for a LLaVA-family model (a JanusImageProcessor) is our own
    preprocessing, with the tower's normalisation; within the documented 1/255 of the file's processor."""
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from cxrtrek_jax.hf.llava_family import image_processor_options
    from cxrtrek_jax.model import get_config

    vision = dataclasses.replace(get_config("tiny").vision, pixel_mean=pixel_mean, pixel_std=pixel_std)
    JanusImageProcessorPil(**image_processor_options(vision)).save_pretrained(str(tmp_path))
    path = tmp_path / "preprocessor_config.json"
    processing = ImageProcessing.from_preprocessor_config(path)
    assert processing == dataclasses.replace(ImageProcessing.ours(vision.image_size, pixel_mean, pixel_std),
                                             source=str(path))
    png = gray_png(tmp_path, (100, 75), seed=5)
    ours = processing.pixel_values(processing.fit(load_image(png)))
    theirs = hf_pixel_values(path, png)
    assert np.abs(ours - theirs).max() <= 1 / 255 / pixel_std + 1e-6
    config = json.loads(path.read_text())
    for change, key in (({"background_color": [255, 255, 255]}, "background_color"), ({"do_pad": False}, "do_pad"),
                        ({"image_mean": [0.1, 0.2, 0.3]}, "image_mean")):
        with pytest.raises(ValueError, match=f"{key}:"):
            ImageProcessing.from_preprocessor_config(write_config(tmp_path, {**config, **change}, "changed.json"))


def test_refuses_a_missing_key_rather_than_guessing_the_class_default(tmp_path):
    config = {k: v for k, v in LLAVA_15.items() if k != "do_center_crop"}
    path = write_config(tmp_path, config)
    with pytest.raises(ValueError, match="do_center_crop: missing"):
        ImageProcessing.from_preprocessor_config(path)


def test_refuses_a_missing_or_malformed_file(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        ImageProcessing.from_preprocessor_config(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        ImageProcessing.from_preprocessor_config(bad)


# ----------------------------------------------------------------------------- the vision tower


def test_model_config_round_trips_channel_normalisation():
    from cxrtrek_jax.model import from_dict, get_config, to_dict

    cfg = get_config("tiny")
    clip = dataclasses.replace(cfg, vision=dataclasses.replace(
        cfg.vision, channel_mean=tuple(LLAVA_15["image_mean"]), channel_std=tuple(LLAVA_15["image_std"])))
    data = json.loads(json.dumps(to_dict(clip)))
    assert data["vision"]["channel_mean"] == LLAVA_15["image_mean"]
    assert from_dict(data) == clip
    # A config written before these fields existed loads, normalising as before.
    old = json.loads(json.dumps(to_dict(cfg)))
    del old["vision"]["channel_mean"], old["vision"]["channel_std"]
    assert from_dict(old).vision.channel_normalisation == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="set together"):
        dataclasses.replace(cfg.vision, channel_mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("config, size", [(LLAVA_15, 28), (GEMMA_3, 28)], ids=["clip-normalisation", "gemma3"])
def test_our_vision_tower_on_fitted_images_equals_siglip_on_hf_pixel_values(tmp_path, config, size):
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from cxrtrek_jax.hf.siglip_tower import siglip_config, tower_specs
    from cxrtrek_jax.hf.tensor_specs import tensors_from_params
    from cxrtrek_jax.model import VisionConfig
    from cxrtrek_jax.model.vision import VisionTower

    path = write_config(tmp_path, shrunk(config, size))
    processing = ImageProcessing.from_preprocessor_config(path)
    vision = VisionConfig(image_size=size, patch_size=7, width=32, depth=2, num_heads=4, mlp_dim=64,
                          channel_mean=processing.channel_mean, channel_std=processing.channel_std)
    tower = VisionTower(vision, dtype=jnp.float32, remat=False, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(tower, nnx.Param))
    rng = np.random.default_rng(1)
    params = {"vision": _randomised(params, rng)}
    nnx.update(tower, nnx.State(params["vision"]))
    tensors = tensors_from_params(params, tower_specs(vision))
    hf_config = siglip_config(vision)
    assert isinstance(hf_config, SiglipVisionConfig)
    hf_tower = SiglipVisionModel(hf_config).eval()
    state = {name.removeprefix("vision_tower."): torch.from_numpy(t) for name, t in tensors.items()}
    missing, unexpected = hf_tower.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)

    pngs = [gray_png(tmp_path, shape, seed=i) for i, shape in enumerate(SHAPES)]
    fitted = np.stack([processing.fit(load_image(p)) for p in pngs])
    ours = np.asarray(tower(jnp.asarray(fitted)))
    pixel_values = np.stack([hf_pixel_values(path, p) for p in pngs])
    with torch.no_grad():
        theirs = hf_tower(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (2, (size // 7) ** 2, 32)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    # The normalisation matters: the same tower with SigLIP's 0.5 / 0.5 sees other pixels.
    if processing.channel_mean != (0.5,) * 3:
        plain = VisionTower(dataclasses.replace(vision, channel_mean=None, channel_std=None), dtype=jnp.float32,
                            remat=False, rngs=nnx.Rngs(0))
        nnx.update(plain, nnx.State(params["vision"]))
        assert np.abs(np.asarray(plain(jnp.asarray(fitted))) - theirs).max() > 1e-2


def _randomised(tree, rng):
    """Every parameter replaced by N(0, 0.2) (biases and norms too, so none is a no-op)."""
    if isinstance(tree, dict):
        return {k: _randomised(v, rng) for k, v in tree.items()}
    return np.asarray(rng.normal(0, 0.2, np.shape(tree)), np.float32)


# ----------------------------------------------------------------------------- wiring


def test_load_study_images_and_the_pipeline_fit_with_the_checkpoints_processing(tmp_path):
    from cxrtrek_jax.decoding.chain import load_study_images
    from data_pipeline.batches.augment import IntensityChange
    from data_pipeline.batches.grain_pipeline import PrepareStudy

    processing = ImageProcessing.from_preprocessor_config(write_config(tmp_path, shrunk(GEMMA_3, 16)))
    pngs = [gray_png(tmp_path, shape, seed=3) for shape in SHAPES]
    expected = np.stack([processing.fit(load_image(p)) for p in pngs])
    np.testing.assert_array_equal(load_study_images(pngs, 16, processing), expected)
    np.testing.assert_array_equal(load_study_images(pngs, 16), np.stack([resize_with_pad(load_image(p), 16)
                                                                        for p in pngs]))
    with pytest.raises(ValueError, match="makes 16x16 images, the model takes 32x32"):
        load_study_images(pngs, 32, processing)
    # Training: a squashed image has no padding, so an intensity change covers all of it (hand-derived:
    # x -> clip((x - mean) * 2 + mean + 0.1) with the mean over the whole image).
    prepare = PrepareStudy(None, None, 16, processing=processing)
    image = load_image(pngs[0])
    mean = expected[0].mean(dtype=np.float64)
    np.testing.assert_allclose(prepare._to_model_input(image, IntensityChange(0.1, 2.0)),
                               np.clip((expected[0] - mean) * 2 + mean + 0.1, 0, 1), atol=1e-6)
    # Ours pads: the padding stays black under the same change.
    padded = PrepareStudy(None, None, 16)._to_model_input(image, IntensityChange(0.1, 2.0))
    assert (padded[:, :2] == 0).all() and (padded[:, -2:] == 0).all()


def test_pipeline_config_carries_the_processing_through_json():
    from cxrtrek_jax.config_tree import from_dict, to_dict
    from data_pipeline.batches.grain_pipeline import PipelineConfig

    processing = ImageProcessing("shortest_edge_center_crop", 30, 35, "bicubic", tuple(LLAVA_15["image_mean"]),
                                 tuple(LLAVA_15["image_std"]), "llava/preprocessor_config.json")
    cfg = PipelineConfig(image_size=30, image_processing=processing)
    assert from_dict(json.loads(json.dumps(to_dict(cfg))), PipelineConfig) == cfg
    assert from_dict({}, PipelineConfig).image_processing is None  # configs written before the field
    with pytest.raises(ValueError, match="makes 30x30 images, image_size is 32"):
        PipelineConfig(image_size=32, image_processing=processing)
