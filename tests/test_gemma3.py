"""The Gemma 3 family against transformers' PyTorch `Gemma3ForConditionalGeneration` built from a tiny
random config: logits with images to 1e-5 in fp32 (sliding and full layers with their own RoPE bases
and linear scaling, +1 norms, query/key norms, sqrt(width) embedding scale, query_pre_attn_scalar,
tied embeddings, pooled projector, the bidirectional mask over each image's tokens); the KV-cache
path equals the uncached one; the config mapping refuses what it cannot represent."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

from cxrtrek_jax.hf import conversion as hf_conversion
from cxrtrek_jax.hf import errors as hf_errors
from cxrtrek_jax.hf import gemma3_family
from cxrtrek_jax.hf.tensor_specs import CONDITIONAL_GENERATION_LAYOUT
from cxrtrek_jax.model import CXRTrekNet, LoraConfig, get_config

IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 32, 4, 16  # an 8x8 patch grid pooled 2x2 to 4x4 tokens
VOCAB, IMAGE_ID, BOI, EOI = 300, 299, 297, 298
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def tiny_gemma3_config(vocab_size=VOCAB, image_token_id=IMAGE_ID, boi=BOI, eoi=EOI, **text):
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False)
    text_config = Gemma3TextConfig(**{
        "vocab_size": vocab_size, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "query_pre_attn_scalar": 16,
        "sliding_window": 7, "layer_types": LAYER_TYPES, "max_position_embeddings": 1024,
        "rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 8.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        **text})
    return Gemma3Config(vision_config=vision, text_config=text_config, mm_tokens_per_image=TOKENS_PER_IMAGE,
                        image_token_index=image_token_id, boi_token_index=boi, eoi_token_index=eoi)


def tiny_gemma3(seed=0, **kwargs):
    """A random tiny Gemma3ForConditionalGeneration (norm weights and the projector non-zero), eager attention."""
    torch.manual_seed(seed)
    config = tiny_gemma3_config(**kwargs)
    config._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if "norm" in name else 0.1))
    return model


@pytest.fixture(scope="module")
def pair():
    hf_model = tiny_gemma3()
    cfg = gemma3_family.from_hf_config(hf_model.config, max_images=2)
    state = hf_conversion.from_hf_tensors({k: v.numpy() for k, v in hf_model.state_dict().items()}, cfg)
    model = nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))
    nnx.update(model, state)
    return hf_model, cfg, model


def _inputs(rng, length=64, starts=(5, 30)):
    """Ids with one wrapped image (boi, 16 image tokens, eoi) at each start, and the images."""
    tokens = rng.integers(3, BOI, (1, length)).astype(np.int32)
    for start in starts:
        tokens[0, start - 1], tokens[0, start + TOKENS_PER_IMAGE] = BOI, EOI
        tokens[0, start:start + TOKENS_PER_IMAGE] = IMAGE_ID
    images = rng.random((len(starts), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return tokens, images


def _torch_logits(hf_model, tokens, images):
    pixels = torch.tensor(np.repeat(images[:, None], 3, axis=1) * 2.0 - 1.0)
    ids = torch.tensor(tokens).long()
    with torch.no_grad():
        return hf_model(input_ids=ids, pixel_values=pixels, token_type_ids=(ids == IMAGE_ID).long()).logits.numpy()


def test_config_maps_every_difference(pair):
    _, cfg, _ = pair
    text = cfg.text
    assert text.family == "gemma3" and text.mlp_activation == "gelu_pytorch_tanh"
    assert text.layer_types == ("sliding", "sliding", "full", "sliding") and text.sliding_window == 7
    assert (text.rope_theta, text.local_rope_theta, text.rope_scaling_factor) == (1e6, 1e4, 8.0)
    assert text.query_pre_attn_scalar == 16 and text.tie_embeddings and text.bidirectional_image_attention
    assert cfg.projector.kind == "gemma3" and cfg.tokens_per_image == TOKENS_PER_IMAGE
    assert cfg.vision.feature_final_norm and cfg.vision.grid_size == 8


def test_logits_with_images_match_pytorch(pair):
    hf_model, cfg, model = pair
    tokens, images = _inputs(np.random.default_rng(0))
    theirs = _torch_logits(hf_model, tokens, images)
    ours = model(jnp.asarray(tokens), jnp.asarray(images[None]))[0]
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=0)
    # The bidirectional image mask matters here: causal attention over image tokens gives other logits.
    causal = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bidirectional_image_attention=False))
    other = nnx.eval_shape(lambda: CXRTrekNet(causal, rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    assert np.abs(np.asarray(other(jnp.asarray(tokens), jnp.asarray(images[None]))[0]) - theirs).max() > 1e-3


def test_text_only_logits_match_pytorch(pair):
    hf_model, _, model = pair
    tokens = np.random.default_rng(1).integers(3, BOI, (2, 40)).astype(np.int32)
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(tokens).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens))[0]), theirs, atol=1e-5, rtol=0)


def test_cached_chunks_equal_the_full_forward(pair):
    """Prefill in chunks (each image inside one chunk), then one token at a time: the sliding window,
    both RoPE bases and the image blocks continue across the cache."""
    _, cfg, model = pair
    tokens, images = _inputs(np.random.default_rng(2))
    full = np.asarray(model(jnp.asarray(tokens), jnp.asarray(images[None]))[0])
    cache = model.init_cache(1, 80)
    pieces = []
    for start, stop in ((0, 24), (24, 50), *((i, i + 1) for i in range(50, 64))):
        logits, cache = model(jnp.asarray(tokens[:, start:stop]), jnp.asarray(images[None]), cache=cache,
                              cache_index=jnp.asarray([start], jnp.int32))
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


def test_lora_and_jit_work_on_the_gemma3_family(pair):
    _, cfg, model = pair
    lora_cfg = dataclasses.replace(cfg, lora=LoraConfig(rank=2))
    adapted = CXRTrekNet(lora_cfg, rngs=nnx.Rngs(1))
    paths = {".".join(map(str, path)) for path, node in nnx.iter_graph(adapted)
             if getattr(node, "lora", None) is not None}
    assert "text.layers.0.attn.q_proj" in paths and "text.layers.3.mlp.down_proj" in paths
    tokens, images = _inputs(np.random.default_rng(3))
    logits = nnx.jit(lambda m, t, i: m(t, i)[0])(adapted, jnp.asarray(tokens), jnp.asarray(images[None]))
    assert np.isfinite(np.asarray(logits)).all()


def test_tensor_round_trip_is_exact(pair):
    hf_model, cfg, model = pair
    tensors = hf_conversion.to_hf_tensors(nnx.state(model, nnx.Param), cfg)
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    canonical = {CONDITIONAL_GENERATION_LAYOUT.canonical_name(k): v for k, v in state.items() if k != "lm_head.weight"}
    assert tensors.keys() == canonical.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(value, canonical[name], err_msg=name)


@pytest.mark.parametrize("field, value, match", [
    ("final_logit_softcapping", 30.0, "final_logit_softcapping"),
    ("attn_logit_softcapping", 50.0, "attn_logit_softcapping"),
    ("attention_bias", True, "attention_bias"),
])
def test_unsupported_configs_are_refused_by_name(field, value, match):
    config = tiny_gemma3_config(**{field: value})
    with pytest.raises(hf_errors.HFConfigError, match=match):
        gemma3_family.from_hf_config(config)


def test_gemma_fields_on_a_llama_decoder_are_refused():
    tiny = get_config("tiny")
    with pytest.raises(ValueError, match="only for family 'gemma3'"):
        dataclasses.replace(tiny.text, sliding_window=4, layer_types=("sliding", "full"))
    with pytest.raises(ValueError, match="must pool the 4x4 patch grid evenly"):
        dataclasses.replace(tiny, projector=dataclasses.replace(tiny.projector, kind="gemma3", tokens_per_image=9))


def test_medgemma_preset_has_the_shapes_of_transformers_gemma3():
    """`medgemma-4b` exported as a Gemma3Config builds (on the meta device) a PyTorch model whose every
    tensor our mapping names with the same shape; ~4.3 B parameters like MedGemma 4B."""
    cfg = get_config("medgemma-4b")
    hf_config = gemma3_family.to_hf_config(cfg, boi_token_id=255_999, eoi_token_id=256_000)
    text = hf_config.text_config
    assert text.layer_types.count("full_attention") == 5 and text.layer_types[5] == "full_attention"
    back = gemma3_family.from_hf_config(hf_config, max_images=4, dtype="bfloat16")
    assert dataclasses.replace(back, remat=True) == cfg
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(hf_config)
    theirs = {CONDITIONAL_GENERATION_LAYOUT.canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items()
              if k != "lm_head.weight"}
    ours = {spec.hf_name: spec.hf_shape for spec in hf_conversion.hf_tensor_specs(cfg)}
    assert ours == theirs
    abstract = nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert count == sum(p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    assert 4.2e9 < count < 4.4e9, count


def test_lora_merged_export_and_peft_adapter_match_pytorch(pair, tmp_path):
    """A Gemma 3 model with non-zero LoRA adapters: merged and saved as a Gemma 3 checkpoint, PyTorch
    gives the unmerged JAX model's logits; the PEFT tensors name real Linear modules of that model."""
    from cxrtrek_jax.hf import exporter as hf_export
    from cxrtrek_jax.model import merge_lora
    from cxrtrek_jax.model.layers import LoraAdapter

    hf_model, cfg, base = pair
    lora_cfg = dataclasses.replace(cfg, lora=LoraConfig(targets=r"text\.layers\.\d+\.(attn\.[qv]_proj|mlp\.down_proj)"
                                                        r"|projector\.linear", rank=2, alpha=4.0))
    model = CXRTrekNet(lora_cfg, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(base, nnx.Param))
    rng = np.random.default_rng(5)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, LoraAdapter):
            node.a[...] = jnp.asarray(rng.standard_normal(node.a.shape) * 0.3, jnp.float32)
            node.b[...] = jnp.asarray(rng.standard_normal(node.b.shape) * 0.3, jnp.float32)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with pytest.raises(hf_export.ExportError, match=r"no Hugging Face Linear module.*projector\.linear.*--merge-lora"):
        hf_export.lora_adapter_tensors(lora_cfg, params)
    text_only = dataclasses.replace(lora_cfg, lora=dataclasses.replace(lora_cfg.lora, targets=r"text\..*"))
    without_projector = {**params, "projector": {"linear": {"kernel": params["projector"]["linear"]["kernel"]},
                                                 "norm": params["projector"]["norm"]}}
    adapter, modules = hf_export.lora_adapter_tensors(text_only, without_projector)
    torch_modules = dict(hf_model.named_modules())
    assert len(modules) == 3 * cfg.text.num_layers and len(adapter) == 2 * len(modules)
    assert all(isinstance(torch_modules[m], torch.nn.Linear) for m in modules)
    tokens, images = _inputs(np.random.default_rng(6))
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(images[None]))[0])
    merge_lora(model)
    hf_conversion.save_hf_checkpoint(nnx.state(model, nnx.Param), dataclasses.replace(lora_cfg, lora=None),
                                     str(tmp_path), boi_token_id=BOI, eoi_token_id=EOI)
    merged = Gemma3ForConditionalGeneration.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    # x @ (W + s A B) against x @ W + s (x @ A) @ B: the same function, rounded in another order.
    np.testing.assert_allclose(ours, _torch_logits(merged, tokens, images), atol=5e-5, rtol=0)
    assert np.abs(ours - _torch_logits(hf_model, tokens, images)).max() > 1e-2  # the adapters matter
