"""Hugging Face LLaVA interop: config mapping, tensor mapping, checkpoint files, parity with PyTorch."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

from cxrtrek_jax.hf import conversion as hf_conversion
from cxrtrek_jax.hf import errors as hf_errors
from cxrtrek_jax.hf import llava_family, safetensors_dir
from cxrtrek_jax.model import CXRTrekNet, get_config, override

IMAGE_SIZE, PATCH = 32, 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
VOCAB = 100
IMAGE_TOKEN = VOCAB - 1


def hf_llava_model(*, heads=4, kv_heads=2, head_dim=10, hidden=48, tied=False, feature_layer=-1,
                   final_norm=True, vision_head=False, projector_act="gelu", projector_bias=True, seed=0):
    """A tiny random LLaVA (SigLIP + Llama) in PyTorch, weights scaled so that logits are O(1)."""
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=vision_head,
                                tie_last_hidden_states=final_norm)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                       rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=tied,
                       eos_token_id=None, bos_token_id=None)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                         vision_feature_select_strategy="full", vision_feature_layer=feature_layer,
                         image_seq_length=TOKENS_PER_IMAGE, projector_hidden_act=projector_act,
                         multimodal_projector_bias=projector_bias, tie_word_embeddings=tied)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" not in name else 0.2))
    return model


def batch_inputs(n_images_per_sample=(2, 1), length=48, pad_last=4, seed=0):
    """Tokens with image runs, grayscale images, image mask and HF pixel values / attention mask."""
    rng = np.random.default_rng(seed)
    batch = len(n_images_per_sample)
    slots = max(n_images_per_sample)
    tokens = rng.integers(0, IMAGE_TOKEN, (batch, length))
    images = rng.random((batch, slots, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    image_mask = np.zeros((batch, slots), bool)
    segment_ids = np.ones((batch, length), np.int32)
    for b, count in enumerate(n_images_per_sample):
        for k in range(count):
            start = 2 + k * (TOKENS_PER_IMAGE + 3)
            tokens[b, start:start + TOKENS_PER_IMAGE] = IMAGE_TOKEN
        # Absent slots come first in sample 1 when it has fewer images, to exercise compaction.
        present = list(range(slots - count, slots)) if b % 2 else list(range(count))
        image_mask[b, present] = True
    segment_ids[-1, length - pad_last:] = 0
    present_images = [images[b, s] for b in range(batch) for s in range(slots) if image_mask[b, s]]
    pixels = np.repeat(np.stack(present_images)[:, None], 3, axis=1) * 2.0 - 1.0
    return dict(tokens=tokens.astype(np.int32), images=images, image_mask=image_mask, segment_ids=segment_ids,
                pixel_values=torch.tensor(pixels), attention_mask=torch.tensor(segment_ids != 0).long())


def torch_logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=torch.tensor(inputs["tokens"]).long(), pixel_values=inputs["pixel_values"],
                     attention_mask=inputs["attention_mask"]).logits.numpy()


@nnx.jit
def jax_forward(model, tokens, images, image_mask, segment_ids):
    return model(tokens, images, image_mask, None, segment_ids)[0]


def jax_model_from_hf(hf_model, *, max_images=2):
    cfg = llava_family.from_hf_config(hf_model.config, max_images=max_images)
    tensors = {name: t.detach().numpy() for name, t in hf_model.state_dict().items()}
    if cfg.text.tie_embeddings:
        del tensors["lm_head.weight"]  # state_dict lists the tied table twice
    model = nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))
    vision_head = hf_model.config.vision_config.vision_use_head
    nnx.update(model, hf_conversion.from_hf_tensors(tensors, cfg, vision_head=vision_head))
    return model


def assert_real_logits_close(ours, ref, segment_ids, atol):
    real = segment_ids != 0
    np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=atol, rtol=0)


def check_import_parity(hf_model, n_images_per_sample, model=None):
    inputs = batch_inputs(n_images_per_sample)
    model = model or jax_model_from_hf(hf_model, max_images=max(n_images_per_sample))
    ours = jax_forward(model, inputs["tokens"], inputs["images"], inputs["image_mask"], inputs["segment_ids"])
    assert_real_logits_close(ours, torch_logits(hf_model, inputs), inputs["segment_ids"], atol=1e-4)


def test_import_parity_gqa_untied_two_and_one_images():
    check_import_parity(hf_llava_model(heads=4, kv_heads=2, head_dim=10), (2, 1))


def test_import_parity_from_save_pretrained_directory_tied(tmp_path):
    hf_model = hf_llava_model(heads=4, kv_heads=1, head_dim=14, tied=True, seed=1)
    hf_model.save_pretrained(str(tmp_path))
    cfg, state = hf_conversion.load_hf_checkpoint(str(tmp_path), max_images=2)
    assert cfg.text.tie_embeddings and cfg.vision.feature_final_norm
    model = nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))
    nnx.update(model, state)
    check_import_parity(hf_model, (1, 2), model)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, images", [
    (dict(heads=4, kv_heads=4, head_dim=12), (1, 1)),
    (dict(heads=6, kv_heads=2, head_dim=6, hidden=48), (2, 2)),
    (dict(heads=8, kv_heads=2, head_dim=8, hidden=64, tied=True), (1, 2)),
    (dict(feature_layer=-2, final_norm=False, projector_act="gelu_pytorch_tanh"), (2, 1)),
    (dict(final_norm=False, projector_bias=False, tied=True), (1, 1)),
    (dict(vision_head=True, feature_layer=1, final_norm=False), (2, 1)),
])
def test_import_parity_sweep(kwargs, images):
    check_import_parity(hf_llava_model(**kwargs), images)


# ---------------------------------------------------------------------------
# Export: JAX -> safetensors -> PyTorch
# ---------------------------------------------------------------------------

def export_config(tied=False):
    cfg = get_config("tiny")
    return override(cfg, {"text.vocab_size": VOCAB, "image_token_id": IMAGE_TOKEN, "text.tie_embeddings": tied,
                          "text.num_heads": 4, "text.num_kv_heads": 1, "text.head_dim": 12})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = export_config(tied=True)
    model = CXRTrekNet(cfg, rngs=nnx.Rngs(3))
    directory = str(tmp_path_factory.mktemp("export"))
    files = hf_conversion.save_hf_checkpoint(model, cfg, directory, eos_token_id=None, bos_token_id=None)
    hf_model, info = LlavaForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    return model, hf_model.eval(), info, files


def test_export_reloads_in_pytorch_with_every_tensor(exported):
    _, _, info, files = exported
    assert files == ["config.json", "model.safetensors"]
    assert not any(info.values()), info


def test_export_parity_logits(exported):
    model, hf_model, _, _ = exported
    inputs = batch_inputs((1, 2))
    ours = jax_forward(model, inputs["tokens"], inputs["images"], inputs["image_mask"], inputs["segment_ids"])
    assert_real_logits_close(ours, torch_logits(hf_model, inputs), inputs["segment_ids"], atol=1e-5)


def jax_greedy(model, tokens, images, steps):
    """Naive greedy decoding with the KV cache (image token suppressed), one sample row per batch row."""
    batch, length = tokens.shape
    cache = model.init_cache(batch, length + steps)
    step = nnx.jit(lambda m, tok, img, c, idx: m(tok, img, None, None, None, c, idx))
    logits, cache = step(model, tokens, images, cache, jnp.zeros((batch,), jnp.int32))
    out = []
    index = jnp.full((batch,), length, jnp.int32)
    for _ in range(steps):
        next_token = jnp.argmax(logits[:, -1].at[:, IMAGE_TOKEN].set(-jnp.inf), axis=-1).astype(jnp.int32)
        out.append(next_token)
        logits, cache = step(model, next_token[:, None], None, cache, index)
        index = index + 1
    return np.stack([np.asarray(t) for t in out], axis=1)


def test_export_greedy_generation_matches(exported):
    model, hf_model, _, _ = exported
    inputs = batch_inputs((1, 1), length=24, pad_last=0)
    ours = jax_greedy(model, jnp.asarray(inputs["tokens"]), jnp.asarray(inputs["images"]), steps=8)
    with torch.no_grad():
        ref = hf_model.generate(input_ids=torch.tensor(inputs["tokens"]).long(), pixel_values=inputs["pixel_values"],
                                max_new_tokens=8, do_sample=False, suppress_tokens=[IMAGE_TOKEN])
    np.testing.assert_array_equal(ours, ref[:, inputs["tokens"].shape[1]:].numpy())


@pytest.mark.slow
def test_export_import_round_trip_untied_sharded_bf16(tmp_path):
    cfg = export_config(tied=False)
    model = CXRTrekNet(cfg, rngs=nnx.Rngs(5))
    files = hf_conversion.save_hf_checkpoint(model, cfg, str(tmp_path), dtype="bfloat16", max_shard_bytes=60_000)
    assert safetensors_dir.SAFETENSORS_INDEX_FILE in files and len(files) > 3
    hf_model, info = LlavaForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info
    inputs = batch_inputs((2, 1))
    new_cfg, state = hf_conversion.load_hf_checkpoint(str(tmp_path), max_images=2)
    reloaded = nnx.eval_shape(lambda: CXRTrekNet(new_cfg, rngs=nnx.Rngs(0)))
    nnx.update(reloaded, state)
    ours = jax_forward(reloaded, inputs["tokens"], inputs["images"], inputs["image_mask"], inputs["segment_ids"])
    ref = torch_logits(hf_model.float().eval(), inputs)
    assert_real_logits_close(ours, ref, inputs["segment_ids"], atol=1e-4)


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

def test_config_round_trip_through_hf():
    cfg = override(get_config("tiny"), {"text.tie_embeddings": True, "vision.feature_layer": -2,
                                        "vision.feature_final_norm": False, "projector.use_bias": False})
    hf = llava_family.to_hf_config(cfg)
    assert hf.vision_config.vision_use_head is False
    assert hf.vision_feature_select_strategy == "full"
    back = llava_family.from_hf_config(hf, max_images=cfg.max_images)
    assert back == cfg
    assert llava_family.from_hf_config(json.loads(hf.to_json_string()), max_images=cfg.max_images) == cfg


def test_preset_7b_maps_to_hf_config():
    cfg = get_config("cxrtreknet-7b")
    hf = llava_family.to_hf_config(cfg)
    assert hf.image_seq_length == 729
    assert hf.text_config.num_key_value_heads == 8
    assert llava_family.from_hf_config(hf, max_images=4, dtype="bfloat16") == dataclasses.replace(cfg, remat=False)


@pytest.mark.parametrize("field, value, message", [
    ("vision_feature_select_strategy", "default", "vision_feature_select_strategy"),
    ("vision_feature_layer", [-2, -1], "vision_feature_layer"),
    ("projector_hidden_act", "relu", "projector_hidden_act"),
    ("image_seq_length", 576, "image_seq_length"),
    ("text_config.attention_bias", True, "text_config.attention_bias"),
    ("text_config.rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}, "rope_type"),
    ("text_config.hidden_act", "gelu", "text_config.hidden_act"),
])
def test_from_hf_config_refuses_unrepresentable(field, value, message):
    hf = json.loads(llava_family.to_hf_config(get_config("tiny")).to_json_string())
    node = hf
    *parents, leaf = field.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    with pytest.raises(hf_errors.HFConfigError, match=message):
        llava_family.from_hf_config(hf)


def test_from_hf_config_refuses_another_tower():
    hf = json.loads(llava_family.to_hf_config(get_config("tiny")).to_json_string())
    hf["vision_config"] = {"model_type": "dinov2"}
    with pytest.raises(hf_errors.HFConfigError, match="vision_config.model_type='dinov2'.*SigLIP.*CLIP"):
        llava_family.from_hf_config(hf)


# ---------------------------------------------------------------------------
# Tensor set checks and files
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tensors():
    cfg = get_config("tiny")
    model = CXRTrekNet(cfg, rngs=nnx.Rngs(1))
    return cfg, model, hf_conversion.to_hf_tensors(model, cfg)


def test_tensor_round_trip_is_exact(tiny_tensors):
    cfg, model, tensors = tiny_tensors
    assert tensors["vision_tower.embeddings.patch_embedding.weight"].shape == (32, 3, 8, 8)
    assert tensors["language_model.model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)
    state = hf_conversion.from_hf_tensors(tensors, cfg)
    ours = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state), ours)


def test_from_hf_tensors_lists_every_problem(tiny_tensors):
    cfg, _, tensors = tiny_tensors
    broken = dict(tensors)
    del broken["language_model.model.norm.weight"]
    broken["language_model.model.layers.9.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    broken["multi_modal_projector.linear_1.weight"] = np.zeros((64, 31), np.float32)
    broken["vision_tower.post_layernorm.bias"] = np.zeros((32,), np.int32)
    with pytest.raises(hf_errors.HFCheckpointError) as err:
        hf_conversion.from_hf_tensors(broken, cfg)
    message = str(err.value)
    assert "missing: ['language_model.model.norm.weight']" in message
    assert "unexpected: ['language_model.model.layers.9.mlp.up_proj.weight']" in message
    assert "multi_modal_projector.linear_1.weight: (64, 31) (expected (64, 32))" in message
    assert "vision_tower.post_layernorm.bias: int32" in message


def test_from_hf_tensors_accepts_in_memory_names_and_bf16(tiny_tensors):
    cfg, _, tensors = tiny_tensors
    renamed = {}
    for name, value in tensors.items():
        name = name.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head", "lm_head")
        name = name.replace("vision_tower.", "model.vision_tower.vision_model.", 1) if name.startswith("vision") else name
        renamed[name] = value.astype(jnp.bfloat16)
    state = hf_conversion.from_hf_tensors(renamed, cfg)
    leaves = jax.tree.leaves(nnx.to_pure_dict(state))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_tied_checkpoint_without_lm_head_and_untied_with(tiny_tensors):
    cfg, _, tensors = tiny_tensors
    tied_cfg = override(cfg, {"text.tie_embeddings": True})
    without_head = {k: v for k, v in tensors.items() if "lm_head" not in k}
    hf_conversion.from_hf_tensors(without_head, tied_cfg)
    with pytest.raises(hf_errors.HFCheckpointError, match="unexpected: \\['language_model.lm_head.weight'\\]"):
        hf_conversion.from_hf_tensors(tensors, tied_cfg)  # a head different from the embedding table
    with pytest.raises(hf_errors.HFCheckpointError, match="missing: \\['language_model.lm_head.weight'\\]"):
        hf_conversion.from_hf_tensors(without_head, cfg)


def test_export_refuses_unmerged_lora():
    cfg = override(get_config("tiny"), {"lora": {"rank": 2}})
    model = CXRTrekNet(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(hf_errors.HFCheckpointError, match="merge_lora"):
        hf_conversion.to_hf_tensors(model, cfg)


def test_sharded_files_round_trip(tmp_path, tiny_tensors):
    _, _, tensors = tiny_tensors
    files = safetensors_dir.write_safetensors_dir(tensors, str(tmp_path), max_shard_bytes=100_000)
    assert files[-1] == safetensors_dir.SAFETENSORS_INDEX_FILE and len(files) > 2
    index = json.loads((tmp_path / safetensors_dir.SAFETENSORS_INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(tensors)
    loaded = safetensors_dir.read_safetensors_dir(str(tmp_path))
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)
    os.remove(tmp_path / files[0])
    with pytest.raises(hf_errors.HFCheckpointError, match=f"names shard {files[0]}, which does not exist"):
        safetensors_dir.read_safetensors_dir(str(tmp_path))


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(hf_errors.HFCheckpointError, match="Convert them to safetensors"):
        safetensors_dir.read_safetensors_dir(str(tmp_path))
    with pytest.raises(hf_errors.HFCheckpointError, match="Convert them to safetensors"):
        safetensors_dir.read_safetensors_dir(str(tmp_path / "pytorch_model.bin"))


def test_empty_directory_is_refused(tmp_path):
    with pytest.raises(hf_errors.HFCheckpointError, match="neither model.safetensors"):
        safetensors_dir.read_safetensors_dir(str(tmp_path))
