"""Model configs: presets, parameter counts, abstract shapes, overrides, JSON round trip, validation."""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cxrtrek_jax.model import (
    CXRTrekNet,
    LoraConfig,
    ModelConfig,
    from_dict,
    get_config,
    override,
    preset_names,
    to_dict,
)


def expected_param_count(cfg: ModelConfig) -> int:
    """Parameter count from the config alone (LoRA excluded)."""
    v, t = cfg.vision, cfg.text
    e, m = v.width, v.mlp_dim
    vision_block = 4 * e + 4 * (e * e + e) + (e * m + m) + (m * e + e)
    vision = v.patch_size**2 * v.num_channels * e + e + v.tokens_per_image * e + v.depth * vision_block + 2 * e
    bias = 2 * t.embed_dim if cfg.projector.use_bias else 0
    projector = e * t.embed_dim + t.embed_dim * t.embed_dim + bias
    d = t.embed_dim
    attention = d * t.num_heads * t.head_dim * 2 + d * t.num_kv_heads * t.head_dim * 2
    text_block = 2 * d + attention + 3 * d * t.mlp_dim
    text = t.vocab_size * d + t.num_layers * text_block + d + (0 if t.tie_embeddings else d * t.vocab_size)
    return vision + projector + text


def abstract_model(cfg):
    return nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0)))


def count(model) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name, tokens_per_image, low, high", [
    ("tiny", 16, 1e4, 1e6),
    ("small", 64, 15e6, 40e6),
    ("cxrtreknet-7b", 729, 6.0e9, 7.0e9),  # GQA (8 kv heads) makes the decoder ~5.9B
])
def test_preset_parameter_count_matches_formula(name, tokens_per_image, low, high):
    cfg = get_config(name)
    assert cfg.tokens_per_image == tokens_per_image
    n = count(abstract_model(cfg))
    print(f"{name}: {n:,} parameters")
    assert n == expected_param_count(cfg)
    assert low <= n <= high


def test_tied_embeddings_and_no_projector_bias_drop_parameters():
    cfg = override(get_config("tiny"), {"text.tie_embeddings": True, "projector.use_bias": False})
    model = abstract_model(cfg)
    assert model.text.lm_head is None and model.projector.linear_1.bias is None
    assert count(model) == expected_param_count(cfg)


@pytest.mark.parametrize("name", ["small", "cxrtreknet-7b"])
def test_preset_forward_shapes_abstractly(name):
    cfg = get_config(name)
    graphdef, state = nnx.split(abstract_model(cfg))
    batch, length = 1, cfg.tokens_per_image + 24

    def logits_of(state, tokens, images):
        return nnx.merge(graphdef, state)(tokens, images)[0]

    out = jax.eval_shape(logits_of, state, jax.ShapeDtypeStruct((batch, length), jnp.int32),
                         jax.ShapeDtypeStruct((batch, 1, cfg.vision.image_size, cfg.vision.image_size), jnp.float32))
    assert out.shape == (batch, length, cfg.vocab_size) and out.dtype == jnp.float32


def test_presets_round_trip_through_json():
    for name in preset_names():
        cfg = get_config(name)
        assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
    with_lora = override(get_config("tiny"), {"lora": {"rank": 4}, "frozen": "vision,text"})
    assert from_dict(json.loads(json.dumps(to_dict(with_lora)))) == with_lora
    assert with_lora.frozen == ("vision", "text") and with_lora.lora == LoraConfig(rank=4)


def test_override_by_dotted_key_with_string_values():
    cfg = override(get_config("tiny"), {"text.num_layers": "4", "vision.feature_final_norm": "false",
                                        "vision.feature_layer": -2, "text.rope_theta": "5e5", "dtype": "bfloat16"})
    assert cfg.text.num_layers == 4 and cfg.text.rope_theta == 5e5 and cfg.dtype == "bfloat16"
    assert cfg.vision.feature_final_norm is False and cfg.vision.feature_layer == -2


def test_override_validates_after_all_changes():
    cfg = override(get_config("tiny"), {"text.vocab_size": 100, "image_token_id": 99})
    assert (cfg.vocab_size, cfg.image_token_id) == (100, 99)
    with pytest.raises(ValueError, match="image_token_id \\(511\\) must be in \\[0, text.vocab_size=100\\)"):
        override(get_config("tiny"), {"text.vocab_size": 100})


@pytest.mark.parametrize("overrides, message", [
    ({"text.num_layer": 3}, "TextConfig has no field 'num_layer'"),
    ({"lora.rank": 3}, "'lora' is None, not a nested config"),
    ({"text.num_layers": "three"}, "'text.num_layers' needs a int"),
    ({"text.num_layers": 2.5}, "'text.num_layers' needs a int"),
    ({"vision.feature_final_norm": "maybe"}, "needs a boolean"),
    ({"text.head_dim": 15}, "head_dim must be even"),
    ({"text.num_kv_heads": 3}, "must be a multiple of num_kv_heads"),
    ({"vision.feature_layer": -2}, "feature_final_norm=True requires the feature layer to be the last"),
    ({"vision.feature_layer": 5}, "feature_layer \\(5\\) is out of range"),
    ({"frozen": ["vision", "language"]}, "unknown towers \\['language'\\]"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"lora": {"rank": 2, "targets": "("}}, "not a valid regular expression"),
])
def test_invalid_overrides_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        override(get_config("tiny"), overrides)


def test_from_dict_rejects_unknown_and_missing_keys():
    data = to_dict(get_config("tiny"))
    data["vision"]["colour"] = 1
    with pytest.raises(ValueError, match="unknown config keys \\['vision.colour'\\]"):
        from_dict(data)
    data = to_dict(get_config("tiny"))
    del data["text"]["vocab_size"]
    with pytest.raises(ValueError, match="missing required keys \\['text.vocab_size'\\]"):
        from_dict(data)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'huge'; known presets: tiny, compact, small, cxrtreknet-7b"):
        get_config("huge")
