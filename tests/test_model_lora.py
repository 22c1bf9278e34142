"""LoRA adapters, merging, freezing and the trainable-parameter filter."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cxrtrek_jax.model import (
    CXRTrekNet,
    LoraConfig,
    apply_lora,
    get_config,
    merge_lora,
    module_path,
    override,
    trainable_filter,
    trainable_mask,
)

CFG = override(get_config("tiny"), {"lora": {"rank": 4, "alpha": 8.0}, "frozen": ("vision", "text")})
SIZE = CFG.vision.image_size


def randomize_lora_b(model, seed):
    """Fresh adapters are a no-op (b = 0); give them a real effect."""
    key = jax.random.key(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if path[-1] == "b":
            key, sub = jax.random.split(key)
            variable[...] = jax.random.normal(sub, variable[...].shape) * 0.1


@pytest.fixture(scope="module")
def lora_model():
    model = CXRTrekNet(CFG, rngs=nnx.Rngs(0))
    randomize_lora_b(model, 1)
    return model


@nnx.jit
def forward(model, tokens, images):
    return model(tokens, images)[0]


def inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.image_token_id, (2, 24)).astype(np.int32)
    tokens[:, 2:2 + CFG.tokens_per_image] = CFG.image_token_id
    return tokens, rng.random((2, 1, SIZE, SIZE), dtype=np.float32)


def lora_paths(model):
    return sorted({module_path(path[:-2]) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))})


def test_adapters_sit_on_the_targeted_projections(lora_model):
    expected = sorted(f"text.layers.{i}.{name}" for i in range(2) for name in
                      ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    assert lora_paths(lora_model) == expected
    q = lora_model.text.layers[0].attn.q_proj.lora
    assert q.a.get_metadata()["out_sharding"] == ("embed", "lora_rank")
    assert q.b.get_metadata()["out_sharding"] == ("lora_rank", "heads", "head_dim")
    assert q.a[...].shape == (64, 4) and q.b[...].shape == (4, 4, 16)


def test_fresh_adapters_do_not_change_the_model():
    base = CXRTrekNet(get_config("tiny"), rngs=nnx.Rngs(0))
    tokens, images = inputs()
    before = forward(base, tokens, images)
    apply_lora(base, LoraConfig(targets=r"projector\.linear_\d", rank=2), rngs=nnx.Rngs(5))
    assert lora_paths(base) == ["projector.linear_1", "projector.linear_2"]
    np.testing.assert_allclose(forward(base, tokens, images), before, atol=1e-6)


def test_merged_model_equals_unmerged(lora_model):
    tokens, images = inputs()
    model = nnx.clone(lora_model)
    unmerged = np.asarray(forward(model, tokens, images))
    assert np.abs(unmerged - np.asarray(forward(CXRTrekNet(get_config("tiny"), rngs=nnx.Rngs(0)),
                                                  tokens, images))).max() > 1e-3
    merged_paths = merge_lora(model)
    assert len(merged_paths) == 14 and model.config.lora is None
    assert lora_paths(model) == []
    np.testing.assert_allclose(forward(model, tokens, images), unmerged, atol=1e-5)


def test_trainable_filter_keeps_lora_and_unfrozen_towers(lora_model):
    trainable = nnx.state(lora_model, trainable_filter(CFG))
    paths = {module_path(path) for path, _ in nnx.to_flat_state(trainable)}
    assert paths and all(".lora." in p or p.startswith("projector.") for p in paths)
    assert any(p.startswith("projector.linear_1.kernel") for p in paths)
    assert not any(p.startswith(("vision.", "text.")) and ".lora." not in p for p in paths)
    everything = override(CFG, {"frozen": []})
    all_params = nnx.state(lora_model, trainable_filter(everything))
    assert len(nnx.to_flat_state(all_params)) == len(nnx.to_flat_state(nnx.state(lora_model, nnx.Param)))


def test_trainable_mask_matches_the_parameter_tree(lora_model):
    params = nnx.state(lora_model, nnx.Param)
    mask = nnx.to_pure_dict(trainable_mask(params, CFG))
    assert jax.tree.structure(mask) == jax.tree.structure(nnx.to_pure_dict(params))
    assert mask["vision"]["patch_embed"]["kernel"] is False
    assert mask["projector"]["linear_2"]["bias"] is True
    assert mask["text"]["layers"][1]["mlp"]["up_proj"]["kernel"] is False
    assert mask["text"]["layers"][1]["mlp"]["up_proj"]["lora"]["a"] is True


def test_optimizer_keeps_state_only_for_trainable_parameters(lora_model):
    optimizer = nnx.Optimizer(lora_model, optax.adam(1e-3), wrt=trainable_filter(CFG))
    n_trainable = sum(x.size for x in jax.tree.leaves(nnx.state(lora_model, trainable_filter(CFG))))
    n_total = sum(x.size for x in jax.tree.leaves(nnx.state(lora_model, nnx.Param)))
    n_moments = sum(x.size for x in jax.tree.leaves(optimizer.opt_state) if x.ndim > 0)
    assert n_moments == 2 * n_trainable < n_total


def test_lora_errors():
    model = CXRTrekNet(get_config("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="match no dense layer; paths look like: projector.linear_1, "):
        apply_lora(model, LoraConfig(targets="decoder\\..*"), rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(targets="projector\\.linear_1"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="projector.linear_1 already has a LoRA adapter"):
        apply_lora(model, LoraConfig(targets="projector\\.linear_1"), rngs=nnx.Rngs(0))


def test_lora_dropout_is_active_in_train_mode_only():
    cfg = override(get_config("tiny"), {"lora": {"rank": 4, "dropout": 0.5}})
    model = CXRTrekNet(cfg, rngs=nnx.Rngs(0))
    randomize_lora_b(model, 2)
    x = jnp.ones((2, 64))
    q_proj = model.text.layers[0].attn.q_proj
    assert not np.allclose(q_proj(x), q_proj(x))  # new dropout masks each call
    model.eval()
    np.testing.assert_array_equal(q_proj(x), q_proj(x))
