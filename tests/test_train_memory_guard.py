"""The train step's memory against JAX's own autodiff of the same loss (issue 38).

The dense and attention layers carry hand-written backward passes tuned for XLA CPU
(`cxrtrek_jax.model.backward_passes`). Once they cost the 7B step on TPU 29.5 GiB of temporaries per
chip, unnoticed by the tests. Guard: on CPU, where the step uses them, the compiled step's
temporary buffer (`memory_analysis().temp_size_in_bytes`) must not exceed that of the same step
differentiated by JAX (`hand_written_backward=False`: the layers' plain forms), same model, same
remat, same batch, by more than `MARGIN`. Measured here (tiny preset, remat, 2 x 512 tokens):
the hand-written passes need about half the temporaries of autodiff. And off CPU the step does not
use them: with `hand_written_backward=False` no custom VJP is left in the program, and the loss and
update are those of the hand-written step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cxrtrek_jax.model import CXRTrekNet, backward_passes, get_config
from cxrtrek_jax.model.attention import MIN_CAUSAL_SPLIT
from cxrtrek_jax.train import optimizer as optimizer_lib
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train import step as step_lib
from cxrtrek_jax.testing import synthetic_batches

# The project's step may need at most this fraction more temporary bytes than autodiff's.
MARGIN = 0.10


def _setup(model_config, seq_len: int, batch: int):
    """(split, tx, optim, shardings, abstract state, batch of numpy arrays) on one CPU device."""
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(), jax.devices("cpu")[:1])
    split = step_lib.split_abstract_model(lambda rngs: CXRTrekNet(model_config, rngs=rngs))
    optim = optimizer_lib.OptimConfig(warmup_steps=0, total_steps=10)
    tx = optimizer_lib.make_optimizer(optim)
    shardings = step_lib.state_shardings(split, tx, mesh)
    spec = synthetic_batches.SyntheticSpec(
        batch_size=batch, seq_len=seq_len, vocab_size=model_config.vocab_size,
        image_token_id=model_config.image_token_id, tokens_per_image=model_config.tokens_per_image,
        max_images=model_config.max_images, image_size=model_config.vision.image_size)
    rows = synthetic_batches.synthetic_batch(spec, 0)
    return split, tx, optim, shardings, mesh, rows


def _abstract_state(split, tx, shardings):
    state = step_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=split.abstract_params,
                                opt_state=jax.eval_shape(tx.init, split.abstract_params))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def test_step_temporaries_within_margin_of_autodiff():
    # remat as the pod presets; rows long enough for the causal attention's two-halves path.
    cfg = dataclasses.replace(get_config("tiny"), remat=True)
    seq_len = 2 * MIN_CAUSAL_SPLIT
    split, tx, optim, shardings, mesh, rows = _setup(cfg, seq_len, batch=2)
    state = _abstract_state(split, tx, shardings)
    batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=sharding_lib.batch_sharding(mesh))
             for k, v in rows.items()}
    temp = {}
    for name, hand_written in (("project", None), ("autodiff", False)):
        step_fn = step_lib.make_train_step(split, tx, optim, shardings, hand_written_backward=hand_written)
        temp[name] = step_fn.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    assert temp["autodiff"] > 0, temp
    assert temp["project"] <= (1 + MARGIN) * temp["autodiff"], (
        f"the train step's temporaries {temp['project'] / 2**20:.1f} MiB exceed autodiff's "
        f"{temp['autodiff'] / 2**20:.1f} MiB by more than {MARGIN:.0%}: a hand-written backward pass "
        "(cxrtrek_jax.model.backward_passes) costs memory")


def _custom_vjp_calls(jaxpr) -> int:
    """custom_vjp equations in a jaxpr, sub-jaxprs (remat, scan, cond) included."""
    from jax.extend.core import jaxprs_in_params

    count = 0
    for eqn in jaxpr.eqns:
        count += "custom_vjp" in eqn.primitive.name
        for sub in jaxprs_in_params(eqn.params):
            count += _custom_vjp_calls(sub)
    return count


def test_plain_forms_trace_no_custom_vjp():
    cfg = dataclasses.replace(get_config("tiny"), remat=True)
    _, _, _, _, _, rows = _setup(cfg, 2 * MIN_CAUSAL_SPLIT, batch=2)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0))))

    def forward(state):
        model = nnx.merge(graphdef, state)
        return model(rows["input_tokens"], rows["images"], rows["image_mask"], rows["positions"],
                     rows["segment_ids"])[0]

    assert _custom_vjp_calls(jax.make_jaxpr(forward)(state).jaxpr) > 0  # the default: hand-written
    with backward_passes.hand_written_backward(False):
        assert _custom_vjp_calls(jax.make_jaxpr(forward)(state).jaxpr) == 0


@pytest.mark.slow  # ~60 s here: two compiles and runs of the tiny step
def test_cpu_step_uses_hand_written_passes_and_autodiff_gives_the_same_update():
    cfg = dataclasses.replace(get_config("tiny"), remat=True)
    split, _, optim, _, mesh, rows = _setup(cfg, 2 * MIN_CAUSAL_SPLIT, batch=2)
    # Plain SGD with rate 1: the update is minus the gradient itself (AdamW's first step would
    # turn the sign of near-zero gradient entries into full-size updates).
    tx = optax.sgd(1.0)
    shardings = step_lib.state_shardings(split, tx, mesh)
    params = step_lib.init_params(lambda rngs: CXRTrekNet(cfg, rngs=rngs), 0, shardings.params)
    batch = sharding_lib.put_batch(rows, mesh)
    steps = {name: step_lib.make_train_step(split, tx, optim, shardings, hand_written_backward=choice)
             for name, choice in (("default", None), ("hand_written", True), ("autodiff", False))}
    state = step_lib.create_train_state(params, tx, shardings)
    text = {name: fn.lower(state, batch).as_text() for name, fn in steps.items()}
    assert text["default"] == text["hand_written"] != text["autodiff"]  # a CPU mesh: hand-written
    out = {}
    for name in ("hand_written", "autodiff"):
        state = step_lib.create_train_state(jax.tree.map(jnp.copy, params), tx, shardings)
        out[name] = jax.device_get(steps[name](state, batch))
    (new_hw, m_hw), (new_ad, m_ad) = out["hand_written"], out["autodiff"]
    np.testing.assert_allclose(m_hw["loss"], m_ad["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_hw["grad_norm"], m_ad["grad_norm"], rtol=1e-4)
    start = jax.tree.leaves(jax.device_get(params))
    grads_hw = [p0 - p1 for p0, p1 in zip(start, jax.tree.leaves(new_hw.params))]
    grads_ad = [p0 - p1 for p0, p1 in zip(start, jax.tree.leaves(new_ad.params))]
    scale = max(float(np.abs(g).max()) for g in grads_ad)  # entries far below it are rounding
    assert scale > 0
    for grad_hw, grad_ad in zip(grads_hw, grads_ad):
        np.testing.assert_allclose(grad_hw, grad_ad, rtol=1e-3, atol=1e-4 * scale)
