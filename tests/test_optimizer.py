"""AdamW + schedule, weight-decay mask, frozen parameters and master-weight checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxrtrek_jax import optimizer as opt


def _params():
    return {
        "attn": {"q_proj": {"kernel": jnp.ones((4, 4))}, "bias": jnp.ones((4,))},
        "input_norm": {"scale": jnp.ones((4,))},
        "tower": {"kernel": jnp.ones((4, 4))},
    }


def test_schedule_warms_up_then_decays_to_final_fraction():
    config = opt.OptimConfig(learning_rate=1e-3, warmup_steps=10, total_steps=110, final_lr_fraction=0.1)
    schedule = opt.learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(1e-4)
    assert float(schedule(500)) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_steps": 10, "total_steps": 10}, "total_steps"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
        ({"final_lr_fraction": 1.5}, "final_lr_fraction"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
)
def test_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        opt.OptimConfig(**kwargs)


def test_weight_decay_mask_skips_norms_biases_and_vectors():
    mask = opt.weight_decay_mask(_params())
    assert mask["attn"]["q_proj"]["kernel"] is True
    assert mask["tower"]["kernel"] is True
    assert mask["attn"]["bias"] is False
    assert mask["input_norm"]["scale"] is False
    # Stacked norms (2-D) are still recognised by name.
    assert opt.weight_decay_mask({"final_norm": {"w": jnp.ones((2, 4))}})["final_norm"]["w"] is False
    assert opt.weight_decay_mask({"pos": jnp.ones((4,))})["pos"] is False


def test_weight_decay_applies_to_matrices_only():
    config = opt.OptimConfig(learning_rate=0.1, warmup_steps=0, total_steps=10,
                             weight_decay=0.5, clip_norm=None)
    tx = opt.make_optimizer(config)
    params = _params()
    state = tx.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    # Step 0 of a 0-warmup schedule has the peak rate.
    updates, _ = tx.update(zero_grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["attn"]["q_proj"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(new["attn"]["bias"], 1.0)
    np.testing.assert_array_equal(new["input_norm"]["scale"], 1.0)


def test_frozen_parameters_get_no_state_and_no_update():
    trainable = {"attn": {"q_proj": {"kernel": True}, "bias": True},
                 "input_norm": {"scale": True}, "tower": {"kernel": False}}
    config = opt.OptimConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, weight_decay=0.1)
    tx = opt.make_optimizer(config, trainable)
    params = _params()
    state = tx.init(params)
    n_state = sum(x.size for x in jax.tree.leaves(state) if jnp.ndim(x) > 0)
    n_trainable = 16 + 4 + 4
    assert n_state == 2 * n_trainable  # Adam mu and nu for trainable parameters only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["tower"]["kernel"], params["tower"]["kernel"])
    assert not np.allclose(new["attn"]["q_proj"]["kernel"], 1.0)


def test_clipping_norm_is_over_trainable_gradients_only():
    trainable = {"attn": {"q_proj": {"kernel": True}, "bias": False},
                 "input_norm": {"scale": False}, "tower": {"kernel": False}}
    config = opt.OptimConfig(learning_rate=1.0, warmup_steps=0, total_steps=10, clip_norm=1.0,
                             b1=0.0, b2=0.0, eps=0.0)
    tx = opt.make_optimizer(config, trainable)
    params = _params()
    grads = jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params)
    grads["attn"]["q_proj"]["kernel"] = jnp.full((4, 4), 0.01)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Trainable norm is 0.04 < 1: no clipping; Adam with b1=b2=0, eps=0 gives sign(g) * lr.
    np.testing.assert_allclose(updates["attn"]["q_proj"]["kernel"], -1.0, rtol=1e-5)
    np.testing.assert_array_equal(updates["tower"]["kernel"], 0.0)


def test_check_master_weights_rejects_low_precision():
    opt.check_master_weights(_params())
    params = _params()
    params["tower"]["kernel"] = params["tower"]["kernel"].astype(jnp.bfloat16)
    with pytest.raises(ValueError, match=r"\['tower'\]\['kernel'\]: bfloat16"):
        opt.check_master_weights(params)


def test_compute_dtype_defaults_by_backend():
    from cxrtrek_jax.train_loop import default_compute_dtype

    assert default_compute_dtype("cpu") == "float32"
    assert default_compute_dtype("tpu") == default_compute_dtype("gpu") == "bfloat16"


def test_vision_lr_scale_slows_only_the_vision_side():
    params = {"vision": {"kernel": jnp.ones((4, 4))}, "projector": {"kernel": jnp.ones((4, 4))},
              "text": {"kernel": jnp.ones((4, 4))}}
    grads = jax.tree.map(jnp.ones_like, params)

    def first_update(scale, trainable=None):
        config = opt.OptimConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, clip_norm=None,
                                 vision_lr_scale=scale)
        tx = opt.make_optimizer(config, trainable)
        updates, _ = tx.update(grads, tx.init(params), params)
        return jax.tree.map(lambda u: float(u[0, 0]), updates)

    plain, slowed = first_update(1.0), first_update(0.1)
    assert slowed["text"]["kernel"] == pytest.approx(plain["text"]["kernel"])
    for side in ("vision", "projector"):
        assert slowed[side]["kernel"] == pytest.approx(0.1 * plain[side]["kernel"])
    # With a frozen decoder (multi_transform), the vision side is still scaled and the text frozen.
    frozen_text = first_update(0.1, {"vision": {"kernel": True}, "projector": {"kernel": True},
                                     "text": {"kernel": False}})
    assert frozen_text["text"]["kernel"] == 0.0
    assert frozen_text["vision"]["kernel"] == pytest.approx(0.1 * plain["vision"]["kernel"])
    with pytest.raises(ValueError, match="vision_lr_scale"):
        opt.OptimConfig(vision_lr_scale=-1.0)
