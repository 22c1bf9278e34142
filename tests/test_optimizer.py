"""AdamW + schedule, weight-decay mask, frozen parameters and master-weight checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxrtrek_jax.train import optimizer as opt


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
    from cxrtrek_jax.train.loop import default_compute_dtype

    assert default_compute_dtype("cpu") == "float32"
    assert default_compute_dtype("tpu") == default_compute_dtype("gpu") == "bfloat16"


def _tower_params():
    return {"vision": {"kernel": jnp.ones((4, 4))}, "projector": {"kernel": jnp.ones((4, 4))},
            "text": {"kernel": jnp.ones((4, 4))}}


def _updates_over_steps(config, steps, trainable=None):
    """Per step, the first element of every parameter's update under constant unit gradients."""
    params = _tower_params()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = opt.make_optimizer(config, trainable)
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        out.append(jax.tree.map(lambda u: float(u[0, 0]), updates))
    return out


def test_each_tower_follows_its_own_peak_and_warmup():
    # Adam with constant unit gradients and b1 = b2 = eps = 0 moves every entry by exactly -lr(step),
    # so the updates read off each tower's schedule; the reference is the schedule written out by hand.
    config = opt.OptimConfig(learning_rate=0.1, warmup_steps=2, total_steps=10, final_lr_fraction=1.0,
                             clip_norm=None, b1=0.0, b2=0.0, eps=0.0,
                             vision=opt.TowerSchedule(learning_rate=0.01, warmup_steps=4),
                             projector=opt.TowerSchedule(learning_rate=0.001))
    steps = _updates_over_steps(config, 6)
    expected = {"text": [0.0, 0.05, 0.1, 0.1, 0.1, 0.1],
                "projector": [0.0, 0.0005, 0.001, 0.001, 0.001, 0.001],
                "vision": [0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01]}
    for tower, lrs in expected.items():
        assert [-s[tower]["kernel"] for s in steps] == pytest.approx(lrs, rel=1e-5, abs=1e-9), tower
    # The towers' own schedules survive freezing another tower (multi_transform with "frozen").
    frozen_text = _updates_over_steps(config, 3, {"vision": {"kernel": True}, "projector": {"kernel": True},
                                                  "text": {"kernel": False}})
    assert [s["text"]["kernel"] for s in frozen_text] == [0.0, 0.0, 0.0]
    assert -frozen_text[2]["vision"]["kernel"] == pytest.approx(0.005)


def test_tower_schedules_default_to_the_shared_one_and_are_validated():
    plain = opt.OptimConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, clip_norm=None)
    updates = _updates_over_steps(plain, 1)[0]
    assert updates["vision"]["kernel"] == updates["projector"]["kernel"] == updates["text"]["kernel"]
    assert opt.tower_labels(_tower_params())["projector"]["kernel"] == "projector"
    assert opt.tower_labels({"other": jnp.ones(2)}) == {"other": "shared"}
    with pytest.raises(ValueError, match="TowerSchedule.learning_rate"):
        opt.TowerSchedule(learning_rate=-1.0)
    with pytest.raises(ValueError, match="vision.warmup_steps"):
        opt.OptimConfig(total_steps=10, warmup_steps=1, vision=opt.TowerSchedule(warmup_steps=10))
