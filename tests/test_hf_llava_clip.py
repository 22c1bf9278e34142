"""LLaVA with a CLIP vision tower, laid out as llava-hf publishes LLaVA-1.5 (`llava-hf/llava-1.5-7b-hf`):
`cxrtrek import-hf` reads it, our logits equal PyTorch's on the same pixels, `export-hf` gives back
identical tensors, and what CLIP or SigLIP cannot express is refused by name."""

import copy
import dataclasses
import json
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding.model_loading import image_processing_of, load_checkpoint_model
from cxrtrek_jax.hf import conversion as hf_conversion
from cxrtrek_jax.hf import errors as hf_errors
from cxrtrek_jax.hf import llava_family, siglip_tower
from cxrtrek_jax.model import CXRTrekNet, ModelConfig, ProjectorConfig, from_dict, get_config, override, to_dict
from cxrtrek_jax.train import checkpointing
from data_pipeline.files.image_processing import model_input
from tests.published_checkpoints import write_llava15
from tests.test_hf_import import foreign_tokenizer

IMAGE_SIZE, PATCH = 32, 8
GRID_TOKENS = (IMAGE_SIZE // PATCH) ** 2

# config.json of llava-hf/llava-1.5-7b-hf (transformers 4.36), field for field; only the sizes are shrunk,
# the Llama sizes it leaves to LlamaConfig's defaults are written out, and `image_seq_length` (which
# transformers >= 4.45 writes; its default 576 is right for the real 336 px / 14 px tower) is added.
LLAVA_15_LAYOUT = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": None,  # the tokenizer's <image>
    "model_type": "llava",
    "pad_token_id": None,  # the tokenizer's <pad>
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 256,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": None,  # the tokenizer's
        "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 32,
        "image_size": IMAGE_SIZE,
        "intermediate_size": 64,
        "model_type": "clip_vision_model",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "patch_size": PATCH,
        "projection_dim": 16,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": None,  # the tokenizer's
    "image_seq_length": GRID_TOKENS,
}


def llava_15_config(tokenizer, **changes):
    """The layout above for `tokenizer`, with top-level `changes`."""
    config = copy.deepcopy(LLAVA_15_LAYOUT)
    config.update(image_token_index=tokenizer.image_id, pad_token_id=tokenizer.pad_id, vocab_size=tokenizer.vocab_size)
    config["text_config"]["vocab_size"] = tokenizer.vocab_size
    config.update(changes)
    return config


def random_llava(config_dict, seed=0):
    """A random `LlavaForConditionalGeneration` (float32, eval) with weights scaled so logits are O(1)."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig.from_dict(config_dict)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" not in name else 0.2))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(directory, torch model, tokenizer): the tiny LLaVA-1.5 saved with save_pretrained, ChatML tokenizer."""
    directory = tmp_path_factory.mktemp("hf") / "llava15"
    directory.mkdir()
    tokenizer = foreign_tokenizer(directory)
    model = random_llava(llava_15_config(tokenizer))
    model.save_pretrained(str(directory))
    return directory, model, tokenizer


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "imported"
    assert main(["import-hf", str(hf_dir[0]), "--out", str(out), "--max-images", "2"]) == 0
    return out


def hf_pixels(images, vision):
    """HF pixel_values [N, 3, H, W] of grayscale images [N, H, W] in [0, 1]: our normalisation, 3 channels."""
    return torch.tensor(np.repeat(((images - vision.pixel_mean) / vision.pixel_std)[:, None], 3, axis=1))


def two_image_prompt(image_id, tokens_per_image, length=50, seed=0):
    """Tokens [1, length] with two runs of image tokens, and two grayscale images [1, 2, H, W]."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, image_id, (1, length)).astype(np.int32)
    tokens[0, 2:2 + tokens_per_image] = image_id
    tokens[0, 5 + tokens_per_image:5 + 2 * tokens_per_image] = image_id
    return tokens, rng.random((1, 2, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


@nnx.jit
def jax_logits(model, tokens, images):
    return model(tokens, images, jnp.ones(images.shape[:2], bool), None, jnp.ones_like(tokens))[0]


def assert_logits_match(model, hf_model, cfg, seed=0):
    tokens, images = two_image_prompt(cfg.image_token_id, cfg.tokens_per_image, seed=seed)
    ours = jax_logits(model, jnp.asarray(tokens), jnp.asarray(images))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(tokens).long(), pixel_values=hf_pixels(images[0], cfg.vision)).logits
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------
# Import, parity, round trip
# ---------------------------------------------------------------------------

def test_import_reads_the_clip_tower(hf_dir, imported):
    vision = load_checkpoint_model(imported).config.vision
    assert (vision.class_token, vision.pre_norm, vision.patch_bias) == (True, True, False)
    assert (vision.feature_layer, vision.feature_class_token, vision.feature_final_norm) == (-2, False, False)
    assert (vision.activation, vision.layer_norm_eps, vision.depth) == ("quick_gelu", 1e-5, 3)
    assert vision.num_positions == GRID_TOKENS + 1 and vision.tokens_per_image == GRID_TOKENS
    names = checkpointing.read_metadata(imported)["logical_axis_names"]
    assert names["vision/class_embed"] == ["embed"] and names["vision/pre_norm/scale"] == ["embed"]
    assert names["vision/pos_embed"] == ["patch", "embed"] and "vision/patch_embed/bias" not in names


def test_configs_without_the_clip_fields_load_as_siglip():
    """Checkpoints written before the CLIP fields existed: same config, same parameters."""
    tiny = get_config("tiny")
    old = to_dict(tiny)
    for field in ("class_token", "pre_norm", "patch_bias", "feature_class_token"):
        del old["vision"][field]
    assert from_dict(old) == tiny
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: CXRTrekNet(tiny, rngs=nnx.Rngs(0))), nnx.Param))
    assert set(params["vision"]) == {"patch_embed", "pos_embed", "layers", "final_norm"}
    assert params["vision"]["pos_embed"].shape == (GRID_TOKENS, tiny.vision.width)
    assert set(params["vision"]["patch_embed"]) == {"kernel", "bias"}


def test_logits_equal_pytorch_on_the_same_pixels(hf_dir, imported):
    _, hf_model, _ = hf_dir
    loaded = load_checkpoint_model(imported)
    assert_logits_match(nnx.merge(loaded.graphdef, loaded.state), hf_model, loaded.config)


def test_export_round_trip_gives_identical_tensors(hf_dir, imported, tmp_path):
    _, hf_model, tokenizer = hf_dir
    out = tmp_path / "exported"
    assert main(["export-hf", str(imported), "--out", str(out)]) == 0
    written = json.loads((out / "config.json").read_text())
    assert written["vision_config"]["model_type"] == "clip_vision_model"
    assert (written["vision_feature_layer"], written["vision_feature_select_strategy"]) == (-2, "default")
    reloaded = LlavaForConditionalGeneration.from_pretrained(str(out))
    original, again = hf_model.state_dict(), reloaded.state_dict()
    assert original.keys() == again.keys()
    for name in original:
        assert torch.equal(original[name], again[name]), name
    # The exported processor expands <image> to the grid's 16 tokens, the class token's dropped.
    processor = AutoProcessor.from_pretrained(str(out))
    image = Image.fromarray((np.random.default_rng(1).random((IMAGE_SIZE, 40)) * 255).astype(np.uint8))
    ids = processor(images=[image], text="<image>\nIs it normal?", return_tensors="np")["input_ids"]
    assert int((ids == tokenizer.image_id).sum()) == GRID_TOKENS


def test_published_llava15_files_import_with_no_flags_and_see_the_processors_pixels(tmp_path):
    """llava-1.5's own files (template, `CLIPImageProcessor` with centre crop, processor config with
    strategy "default") around the CLIP weights: the processor's ids and pixel_values for a non-square
    image give the same logits as our preprocessing (`image_processing_of`) and model."""
    directory = tmp_path / "llava-1.5-7b-hf"
    backend = write_llava15(directory)
    ids = SimpleNamespace(image_id=backend.token_to_id("<image>"), pad_id=backend.token_to_id("<pad>"),
                          vocab_size=backend.get_vocab_size())
    hf_model = random_llava(llava_15_config(ids), seed=4)
    hf_model.save_pretrained(str(directory))
    assert main(["import-hf", str(directory), "--out", str(tmp_path / "imported"), "--max-images", "1"]) == 0
    loaded = load_checkpoint_model(tmp_path / "imported")
    processing = image_processing_of(loaded.tokenizer_dir)
    image = np.random.default_rng(5).integers(0, 256, (40, 57)).astype(np.uint8)
    processor = AutoProcessor.from_pretrained(str(directory))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there an effusion?"}]}]
    inputs = processor(images=[Image.fromarray(image).convert("RGB")], return_tensors="pt",
                       text=processor.apply_chat_template(messages, add_generation_prompt=True))
    tokens = inputs["input_ids"].numpy().astype(np.int32)
    assert int((tokens == ids.image_id).sum()) == GRID_TOKENS
    fitted = model_input(image / 255.0, loaded.config.vision.image_size, processing)
    ours = jax_logits(loaded.model(), jnp.asarray(tokens), jnp.asarray(fitted[None, None], jnp.float32))
    with torch.no_grad():
        theirs = hf_model(**inputs).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)


def test_strategy_full_keeps_the_class_token(hf_dir):
    cfg = llava_family.from_hf_config(llava_15_config(hf_dir[2], vision_feature_select_strategy="full",
                                                      image_seq_length=GRID_TOKENS + 1), max_images=2)
    assert cfg.vision.feature_class_token and cfg.tokens_per_image == GRID_TOKENS + 1
    assert llava_family.from_hf_config(llava_family.to_hf_config(cfg), max_images=2) == cfg


@pytest.mark.slow
@pytest.mark.parametrize("changes, tokens", [
    ({"vision_feature_select_strategy": "full", "image_seq_length": GRID_TOKENS + 1}, GRID_TOKENS + 1),
    ({"vision_feature_layer": 1}, GRID_TOKENS),  # (transformers cannot take hidden state 0: it asks for
    # hidden states only `if vision_feature_layer`)
], ids=["full-keeps-class-token", "feature-layer-1"])
def test_strategy_full_and_another_feature_layer_match_pytorch(hf_dir, changes, tokens):
    _, _, tokenizer = hf_dir
    hf_model = random_llava(llava_15_config(tokenizer, **changes), seed=2)
    cfg = llava_family.from_hf_config(hf_model.config, max_images=2)
    assert cfg.tokens_per_image == tokens
    model = nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))
    tensors = {name: t.detach().numpy() for name, t in hf_model.state_dict().items()}
    nnx.update(model, hf_conversion.from_hf_tensors(tensors, cfg))
    assert_logits_match(model, hf_model, cfg, seed=3)


# ---------------------------------------------------------------------------
# What CLIP, SigLIP and the configs refuse
# ---------------------------------------------------------------------------

def _clip_model_config(**vision):
    cfg = get_config("tiny")
    fields = dict(class_token=True, pre_norm=True, patch_bias=False, feature_final_norm=False, feature_layer=-2,
                  activation="quick_gelu")
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **{**fields, **vision}))


@pytest.mark.parametrize("vision, field", [
    (dict(patch_bias=True), "vision.patch_bias"),
    (dict(pre_norm=False), "vision.pre_norm"),
    (dict(feature_final_norm=True, feature_layer=-1), "vision.feature_final_norm"),
])
def test_export_refuses_a_tower_clip_cannot_express(vision, field):
    with pytest.raises(hf_errors.HFConfigError, match=field):
        llava_family.to_hf_config(_clip_model_config(**vision))


@pytest.mark.parametrize("field, value", [("class_token", True), ("pre_norm", True), ("patch_bias", False)])
def test_siglip_config_refuses_what_siglip_lacks(field, value):
    """Gemma 3 exports every tower as SigLIP (`siglip_config`): without this it would drop a class token silently."""
    vision = dataclasses.replace(get_config("tiny").vision, **{field: value})
    with pytest.raises(hf_errors.HFConfigError, match=f"vision.{field}"):
        siglip_tower.siglip_config(vision)


def test_vision_config_refuses_keeping_a_class_token_it_lacks():
    with pytest.raises(ValueError, match="feature_class_token=True requires class_token=True"):
        override(get_config("tiny"), {"vision.feature_class_token": True})
    cfg = _clip_model_config(feature_class_token=True)
    with pytest.raises(ValueError, match="cannot feed projector kind 'gemma3'"):
        dataclasses.replace(cfg, projector=ProjectorConfig(kind="gemma3", tokens_per_image=4),
                            text=dataclasses.replace(cfg.text, family="gemma3"))
    assert isinstance(cfg, ModelConfig) and cfg.tokens_per_image == GRID_TOKENS + 1
