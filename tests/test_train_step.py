"""Masked loss and per-stage metrics, gradient accumulation, non-finite steps, frozen params.

Mesh independence of the step (1 vs 8 devices) is tested in test_sharding.py.
"""

import dataclasses

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cxrtrek_jax.train import optimizer as opt
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.testing import synthetic_batches as sb
from cxrtrek_jax.train import step as ts
from cxrtrek_jax.model import CXRTrekNet, get_config, override, trainable_mask
from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS

CONFIG = get_config("tiny")
# One block per tower: half the compile time, for the tests that do not compare against CONFIG.
ONE_BLOCK = override(CONFIG, {"text.num_layers": 1, "vision.depth": 1})
OPTIM = opt.OptimConfig(learning_rate=3e-3, warmup_steps=1, total_steps=50, weight_decay=0.01)
SPEC = sb.SyntheticSpec(
    batch_size=8, seq_len=48, vocab_size=CONFIG.vocab_size, image_token_id=CONFIG.image_token_id,
    tokens_per_image=CONFIG.tokens_per_image, max_images=CONFIG.max_images,
    image_size=CONFIG.vision.image_size,
)


def _host_params(split, seed=0):
    """Random host parameters of the model's shapes (avoids compiling the model's initialiser)."""
    rng = np.random.default_rng(seed)

    def one(path, x):
        noise = 0.05 * rng.standard_normal(x.shape).astype(np.float32)
        return noise + 1.0 if "scale" in jax.tree_util.keystr(path) else noise

    return jax.tree_util.tree_map_with_path(one, split.abstract_params)


def _trainable(config):
    abstract = nnx.eval_shape(lambda: CXRTrekNet(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(trainable_mask(nnx.state(abstract, nnx.Param), config))


def _setup(config, mesh, optim):
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(config, rngs=rngs))
    trainable = _trainable(config) if config.lora is not None or config.frozen else None
    tx = opt.make_optimizer(optim, trainable)
    shardings = ts.state_shardings(split, tx, mesh)
    step_fn = ts.make_train_step(split, tx, optim, shardings, trainable=trainable)
    return split, tx, shardings, step_fn


def _run(config, mesh, optim, steps, setup=None):
    split, tx, shardings, step_fn = setup or _setup(config, mesh, optim)
    params = _host_params(split)
    state = ts.create_train_state(params, tx, shardings)
    losses, metrics = [], None
    for i in range(steps):
        state, metrics = step_fn(state, sh.put_batch(sb.synthetic_batch(SPEC, i), mesh))
        losses.append(float(metrics["loss"]))
    return params, state, losses, metrics


def _assert_trees_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))


def _one_device_mesh():
    return sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])


def test_token_metric_sums_match_a_numpy_reference():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 5)).astype(np.int32)
    targets[0, 0] = int(np.argmax(logits[0, 0]))  # one certainly-correct token
    mask = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], np.float32)
    stages = np.array([[1, 3, 0, 3, 0], [0, 8, 8, 0, 2]], np.int32)
    sums = jax.device_get(ts.token_metric_sums(logits, targets, mask, stages))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    correct = (logits.argmax(-1) == targets).astype(np.float32)
    np.testing.assert_allclose(sums["loss_sum"], (token_loss * mask).sum(), rtol=1e-5)
    assert sums["answer_tokens"] == 7
    assert sums["correct"] == (correct * mask).sum() >= 1
    for stage in range(1, 9):
        sel = (stages == stage) * mask
        np.testing.assert_allclose(sums["stage_loss_sum"][stage - 1], (token_loss * sel).sum(),
                                   rtol=1e-5, atol=1e-6)
        assert sums["stage_answer_tokens"][stage - 1] == sel.sum()
        assert sums["stage_correct"][stage - 1] == (correct * sel).sum()
    # A masked-in token with stage 0 counts to the totals only.
    assert sums["stage_answer_tokens"].sum() == 6


def test_check_batch_names_the_bad_field():
    batch = sb.synthetic_batch(SPEC, 0)
    ts.check_batch(batch)
    with pytest.raises(ValueError, match=r"missing \['positions'\], unexpected \['extra'\]"):
        ts.check_batch({**{k: v for k, v in batch.items() if k != "positions"}, "extra": 1})
    with pytest.raises(ValueError, match="'loss_mask' has shape"):
        ts.check_batch({**batch, "loss_mask": batch["loss_mask"][:, :-1]})
    with pytest.raises(ValueError, match="'image_mask'"):
        ts.check_batch({**batch, "image_mask": batch["image_mask"][:, :1]})


def _weighted_batch(index=0):
    """A synthetic batch whose loss_mask has weights other than 1 (0.5 on every third token)."""
    batch = sb.synthetic_batch(SPEC, index)
    weights = np.where(np.arange(SPEC.seq_len) % 3 == 0, 0.5, 1.0).astype(np.float32)
    return dict(batch, loss_mask=batch["loss_mask"] * weights)


def _model_inputs(batch):
    return (batch["input_tokens"], batch["images"], batch["image_mask"], batch["positions"],
            batch["segment_ids"])


def _full_logits_reference(graphdef, params, batch):
    """Loss sum over full [B, L, V] logits of `model(...)`, independent of the step's code:
    optax cross-entropy, argmax accuracy and per-stage sums by numpy-style masks."""
    logits, _ = nnx.merge(graphdef, params)(*_model_inputs(batch))
    mask = jnp.asarray(batch["loss_mask"])
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_tokens"])
    correct = (jnp.argmax(logits, -1) == batch["target_tokens"]) * mask
    stages = jnp.asarray(batch["stage_ids"])
    return jnp.sum(token_loss * mask), {
        "loss_sum": jnp.sum(token_loss * mask),
        "correct": jnp.sum(correct),
        "stage_loss_sum": jnp.stack([jnp.sum(token_loss * mask * (stages == s)) for s in range(1, 9)]),
        "stage_correct": jnp.stack([jnp.sum(correct * (stages == s)) for s in range(1, 9)]),
    }


@pytest.fixture(scope="module")
def head_reference():
    model = CXRTrekNet(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = _weighted_batch()
    # Half of the targets are the untrained model's argmax, so that accuracy is not trivially 0.
    logits, _ = jax.jit(lambda p: nnx.merge(graphdef, p)(*_model_inputs(batch)))(params)
    pick = np.arange(SPEC.seq_len) % 2 == 0
    batch["target_tokens"] = np.where(pick, np.argmax(np.asarray(logits), -1),
                                      batch["target_tokens"]).astype(np.int32)
    (_, sums), grads = jax.jit(jax.value_and_grad(
        lambda p: _full_logits_reference(graphdef, p, batch), has_aux=True))(params)
    return graphdef, params, batch, jax.device_get(sums), grads


@pytest.mark.parametrize("chunk", [512, 8])
def test_answer_token_sums_and_gradients_equal_full_logits(head_reference, chunk):
    """512: one piece holds every answer token; 8: the answer tokens fill several pieces."""
    graphdef, params, batch, ref_sums, ref_grads = head_reference
    answers = int((batch["loss_mask"] > 0).sum())
    assert (answers <= chunk) == (chunk == 512) and answers > 3 * 8

    def loss(p):
        hidden, _ = nnx.merge(graphdef, p)(*_model_inputs(batch), return_hidden=True)
        sums = ts.answer_token_sums(hidden, nnx.merge(graphdef, p).text.head, batch["target_tokens"],
                                    batch["loss_mask"], batch["stage_ids"], chunk=chunk)
        return sums["loss_sum"], sums

    (_, sums), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    sums = jax.device_get(sums)
    for name, ref in ref_sums.items():
        np.testing.assert_allclose(sums[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)
    assert 0 < sums["correct"] < sums["answer_tokens"]
    assert sums["answer_tokens"] == batch["loss_mask"].sum()
    np.testing.assert_array_equal(
        sums["stage_answer_tokens"],
        [(batch["loss_mask"] * (batch["stage_ids"] == s)).sum() for s in range(1, 9)])
    for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("chunk", [512, 8])
def test_train_step_loss_equals_full_logits(head_reference, chunk):
    graphdef, params, batch, ref_sums, _ = head_reference
    mesh = _one_device_mesh()
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(CONFIG, rngs=rngs))
    tx = opt.make_optimizer(OPTIM)
    shardings = ts.state_shardings(split, tx, mesh)
    step_fn = ts.make_train_step(split, tx, OPTIM, shardings, head_chunk=chunk)
    state = ts.create_train_state(jax.device_get(nnx.to_pure_dict(params)), tx, shardings)
    _, metrics = step_fn(state, sh.put_batch(batch, mesh))
    m = jax.device_get(metrics)
    tokens = batch["loss_mask"].sum()
    assert m["loss"] == pytest.approx(ref_sums["loss_sum"] / tokens, abs=1e-5)
    assert m["accuracy"] == pytest.approx(ref_sums["correct"] / tokens, abs=1e-6)
    np.testing.assert_allclose(m["stage_loss_sum"], ref_sums["stage_loss_sum"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m["stage_correct"], ref_sums["stage_correct"], atol=1e-6)


def test_compiled_train_step_never_holds_full_logits():
    """Every f32 buffer ending in the vocabulary has at most `head_chunk` rows (or is the LM-head
    kernel [E, V]), never the B x L of the batch."""
    chunk, vocab = 96, CONFIG.vocab_size
    mesh = _one_device_mesh()
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(CONFIG, rngs=rngs))
    tx = opt.make_optimizer(OPTIM)
    shardings = ts.state_shardings(split, tx, mesh)
    step_fn = ts.make_train_step(split, tx, OPTIM, shardings, head_chunk=chunk)
    state = ts.create_train_state(_host_params(split), tx, shardings)
    batch = sh.put_batch(sb.synthetic_batch(SPEC, 0), mesh)
    hlo = step_fn.lower(state, batch).compile().as_text()
    shapes = [tuple(map(int, dims.split(","))) for dims in re.findall(r"f32\[(\d+(?:,\d+)+)\]", hlo)]
    rows = {int(np.prod(shape[:-1])) for shape in shapes if shape[-1] == vocab}
    assert chunk in rows
    assert max(rows) == chunk and rows <= {chunk, CONFIG.text.embed_dim}, sorted(rows)


@pytest.fixture(scope="module")
def reference_setup():
    return _setup(CONFIG, _one_device_mesh(), OPTIM)


@pytest.fixture(scope="module")
def reference_run(reference_setup):
    return _run(CONFIG, _one_device_mesh(), OPTIM, steps=3, setup=reference_setup)


def test_metrics_are_normalised_by_global_answer_tokens(reference_run):
    _, state, losses, metrics = reference_run
    m = jax.device_get(metrics)
    assert m["loss"] == pytest.approx(m["loss_sum"] / m["answer_tokens"], rel=1e-6)
    assert m["answer_tokens"] == sb.synthetic_batch(SPEC, 2)["loss_mask"].sum()
    assert bool(m["finite"]) and m["grad_norm"] > 0
    assert m["learning_rate"] == pytest.approx(float(opt.learning_rate_schedule(OPTIM)(2)))
    assert int(state.step) == 3
    summary = ts.summarize_metrics(metrics)
    assert summary["loss"] == pytest.approx(losses[-1])
    assert summary["answer_tokens"] == sum(summary[f"stage{s}/tokens"] for s in range(1, 9))
    assert summary["stage1/tokens"] > 0 and 0 <= summary["stage1/accuracy"] <= 1


def test_eval_step_sums_match_the_train_step(reference_run):
    params, _, losses, _ = reference_run
    eval_step = ts.make_eval_step(CONFIG, _one_device_mesh())
    sums = eval_step(params, sb.synthetic_batch(SPEC, 0))  # the batch of the first train step
    assert isinstance(sums["loss_sum"], np.ndarray)
    total = jax.tree.map(np.add, sums, eval_step(params, sb.synthetic_batch(SPEC, 0)))
    summary = ts.summarize_sums(total)
    assert summary["loss"] == pytest.approx(losses[0], abs=1e-5)
    assert summary["answer_tokens"] == 2 * sb.synthetic_batch(SPEC, 0)["loss_mask"].sum()


def test_gradient_accumulation_matches_the_full_batch(reference_run):
    _, ref_state, ref_losses, _ = reference_run
    accumulating = dataclasses.replace(OPTIM, grad_accum_steps=2)
    _, state, losses, _ = _run(CONFIG, _one_device_mesh(), accumulating, steps=3)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    _assert_trees_close(state.params, ref_state.params, atol=1e-5)


def test_non_finite_loss_skips_the_update(reference_setup):
    mesh = _one_device_mesh()
    split, tx, shardings, step_fn = reference_setup
    params = _host_params(split)
    state = ts.create_train_state(params, tx, shardings)
    batch = sb.synthetic_batch(SPEC, 0)
    batch["images"][0, 0, 3, 3] = np.nan
    state, metrics = step_fn(state, sh.put_batch(batch, mesh))
    assert not bool(metrics["finite"])
    assert np.isnan(float(metrics["loss"]))
    assert int(state.step) == 0
    _assert_trees_close(state.params, params, atol=0)


def test_frozen_towers_get_no_updates_and_lora_does():
    config = override(ONE_BLOCK, {"lora": {"rank": 2, "dropout": 0.1},
                                  "frozen": ["vision", "projector", "text"]})
    params, state, losses, _ = _run(config, _one_device_mesh(), OPTIM, steps=2)
    trainable = _trainable(config)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, params)
    flat_trainable = jax.tree.leaves(trainable)
    assert any(flat_trainable) and not all(flat_trainable)
    for (path, did_change), is_trainable in zip(jax.tree_util.tree_leaves_with_path(changed),
                                                flat_trainable):
        assert did_change == is_trainable, jax.tree_util.keystr(path)
    assert all(np.isfinite(losses))


@pytest.mark.slow  # bfloat16 compiles and runs slowly on CPU
def test_bfloat16_compute_keeps_float32_master_weights():
    config = override(ONE_BLOCK, {"dtype": "bfloat16"})
    params, state, losses, metrics = _run(config, _one_device_mesh(), OPTIM, steps=2)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert np.isfinite(losses).all() and bool(metrics["finite"])
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, params)
    assert all(jax.tree.leaves(changed))


def _with_image_labels(batch, seed=0):
    """`batch` plus random labels over the finding kinds, about 60 % of them known."""
    rng = np.random.default_rng(seed)
    shape = (batch["input_tokens"].shape[0], len(IMAGE_LABEL_KINDS))
    return dict(batch, image_labels=rng.integers(0, 2, shape).astype(np.float32),
                image_label_mask=(rng.random(shape) < 0.6).astype(np.float32))


def _numpy_image_label_sums(features, image_mask, labels, known):
    """Sigmoid cross-entropy of the fixed read-out of each row's mean slot-0 token, in numpy."""
    pooled = np.asarray(features, np.float64)[:, 0].mean(axis=1)
    readout = np.asarray(ts.image_label_readout(pooled.shape[-1], labels.shape[-1]), np.float64)
    x = pooled @ readout
    bce = np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x)))
    weight = known * image_mask[:, :1]
    return float(np.sum(bce * weight)), float(np.sum(weight))


def test_image_label_loss_matches_numpy_and_reaches_only_the_image_side():
    mesh = _one_device_mesh()
    optim = dataclasses.replace(OPTIM, clip_norm=None)  # a global clip would couple the towers
    model = CXRTrekNet(ONE_BLOCK, rngs=nnx.Rngs(0))
    params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    batch = _with_image_labels(sb.synthetic_batch(SPEC, 0))
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(ONE_BLOCK, rngs=rngs))
    tx = opt.make_optimizer(optim)
    shardings = ts.state_shardings(split, tx, mesh)
    after, metrics = {}, {}
    for weight in (0.0, 2.0):
        step_fn = ts.make_train_step(split, tx, optim, shardings, image_label_weight=weight)
        state, m = step_fn(ts.create_train_state(params, tx, shardings), sh.put_batch(batch, mesh))
        metrics[weight] = jax.device_get(m)
        # Adam's first update is the gradient's sign; the second shows a changed gradient.
        state, _ = step_fn(state, sh.put_batch(_with_image_labels(sb.synthetic_batch(SPEC, 1), 1), mesh))
        after[weight] = jax.device_get(state.params)
    ref_sum, ref_count = _numpy_image_label_sums(model.encode_images(batch["images"]), batch["image_mask"],
                                                 batch["image_labels"], batch["image_label_mask"])
    m = metrics[2.0]
    assert "image_label_loss_sum" not in metrics[0.0]
    assert m["image_labels"] == ref_count > 0
    assert m["image_label_loss_sum"] == pytest.approx(ref_sum, rel=1e-5)
    assert m["loss"] == pytest.approx(metrics[0.0]["loss"], rel=1e-6)  # "loss" stays the token loss
    assert ts.summarize_metrics(m)["image_label_loss"] == pytest.approx(ref_sum / ref_count, rel=1e-5)
    for tower, moved in (("text", False), ("vision", True), ("projector", True)):
        differs = [bool(np.any(a != b)) for a, b in zip(jax.tree.leaves(after[0.0][tower]),
                                                        jax.tree.leaves(after[2.0][tower]))]
        assert any(differs) == moved, tower


def test_image_label_weight_needs_labelled_batches():
    mesh = _one_device_mesh()
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(ONE_BLOCK, rngs=rngs))
    tx = opt.make_optimizer(OPTIM)
    shardings = ts.state_shardings(split, tx, mesh)
    with pytest.raises(ValueError, match="image_label_weight must be >= 0"):
        ts.make_train_step(split, tx, OPTIM, shardings, image_label_weight=-1.0)
    step_fn = ts.make_train_step(split, tx, OPTIM, shardings, image_label_weight=1.0)
    state = ts.create_train_state(_host_params(split), tx, shardings)
    with pytest.raises(ValueError, match="needs batches with"):
        step_fn(state, sh.put_batch(sb.synthetic_batch(SPEC, 0), mesh))
    batch = _with_image_labels(sb.synthetic_batch(SPEC, 0))
    with pytest.raises(ValueError, match=r"missing \['image_label_mask'\]"):
        ts.check_batch({k: v for k, v in batch.items() if k != "image_label_mask"})
    with pytest.raises(ValueError, match="'image_labels'"):
        ts.check_batch({**batch, "image_labels": batch["image_labels"][:, :2]})
