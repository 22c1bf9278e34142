"""The training loop: mesh, sharded state, resume, steps, checkpoints, pre-emption and NaN stops.

`run_training(spec, ...)` is what `cxrtrek train` builds on: it trains a `TrainSpec` (model,
optimizer, mesh, seed), reports through `TrainHooks`, and takes a factory for the batch iterator
(a Grain iterator, whose position is checkpointed with the model so a resumed run sees exactly
the batches an uninterrupted one would). `cxrtrek_jax.testing.synthetic_training` drives it over
synthetic batches (the sharding, resume and fault-injection tests use it).

Loop, per optimizer step s -> s + 1: poll pre-emption (save at s and return if requested); take
the next batch (process-local rows -> global arrays); run the jitted step; check the previous
step's `finite` flag (one step late, so the host never waits for the device it just fed);
log; save every `save_every` steps (after checking that step's flag). A non-finite step raises
`NonFiniteError` without saving, so the newest checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import optax
from flax import nnx

from cxrtrek_jax.train import checkpointing as ckpt_lib
from cxrtrek_jax.train import optimizer as optimizer_lib
from cxrtrek_jax.train import preemption as preemption_lib
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train import step as step_lib

__all__ = ["TrainSpec", "TrainHooks", "TrainResult", "run_training", "default_compute_dtype"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """final_step: optimizer steps done; stop_reason: "completed", "preempted" or
    "data_exhausted"; resumed_from: the checkpoint step training continued from (None = fresh);
    last_metrics: the host summary of the final step (empty if no step ran)."""

    final_step: int
    stop_reason: str
    resumed_from: int | None
    last_metrics: dict[str, float]


def default_compute_dtype(backend: str | None = None) -> str:
    """The model's compute dtype for a backend: bfloat16 on TPU/GPU, float32 on CPU (bf16 is
    slow there). Parameters stay float32 either way."""
    backend = jax.default_backend() if backend is None else backend
    return "float32" if backend == "cpu" else "bfloat16"


def _require_checkpointable(iterator: Any) -> None:
    if not (hasattr(iterator, "get_state") and hasattr(iterator, "set_state")):
        raise TypeError(
            f"the batch iterator ({type(iterator).__name__}) must be checkpointable (a Grain "
            "DatasetIterator / DataLoaderIterator with get_state/set_state) so a resumed run "
            "continues at the same batch"
        )


def _trainable_mask(model_config, abstract_params_state: nnx.State) -> Any | None:
    from cxrtrek_jax.model import trainable_mask

    if model_config.lora is None and not model_config.frozen:
        return None
    return nnx.to_pure_dict(trainable_mask(abstract_params_state, model_config))


def _lora_mask(abstract_params_state: nnx.State) -> Any:
    """Bool pytree of the parameters: True for LoRA adapter parameters (fresh when starting a
    LoRA model from its base model's checkpoint)."""
    return nnx.to_pure_dict(nnx.map_state(
        lambda _, variable: variable.replace(isinstance(variable, nnx.LoRAParam)), abstract_params_state))


def _warn_on_config_change(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        log.warning("resuming with a model config that differs from the checkpoint's in %s", changed)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """What a run trains and how each optimizer step computes it (recorded in the checkpoint
    metadata): `model_config` (a `cxrtrek_jax.model.ModelConfig`), its optimizer `optim`, the
    device mesh `mesh_config`, `seed` (of fresh parameters and of the model's RNG streams, e.g.
    LoRA dropout), `image_label_weight` (the auxiliary image-label loss, `step.make_train_step`;
    > 0 needs batches with image labels) and the logical-axis `rules` of the activations."""

    model_config: Any
    optim: optimizer_lib.OptimConfig
    mesh_config: sharding_lib.MeshConfig
    seed: int = 0
    image_label_weight: float = 0.0
    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES


@dataclasses.dataclass(frozen=True)
class TrainHooks:
    """The caller's callbacks. on_log(step, summary): every `log_every` steps and at the last
    step. on_start(step): once the start is known (the restored checkpoint's step, 0 when fresh;
    e.g. to drop log records of later steps, which are redone). evaluate(params, step) ->
    {"val_loss": ...}: at each save, `step` being the checkpoint's; its values are passed to the
    checkpoint manager (to keep the best steps)."""

    on_log: StepCallback | None = None
    log_every: int = 1
    on_start: Callable[[int], None] | None = None
    evaluate: Callable[[Any, int], Mapping[str, float]] | None = None


@dataclasses.dataclass(frozen=True)
class _Setup:
    """The sharded pieces of a `TrainSpec`: the mesh, the model factory and its split, the
    abstract `nnx.Param` state, the optimizer, the state's shardings and the jitted step."""

    mesh: jax.sharding.Mesh
    model_fn: Callable[[nnx.Rngs], nnx.Module]
    split: step_lib.SplitModel
    abstract_params_state: nnx.State
    tx: optax.GradientTransformation
    shardings: step_lib.TrainState
    train_step: Callable


def _build(spec: TrainSpec, devices: list[jax.Device] | None) -> _Setup:
    from cxrtrek_jax.model import CXRTrekNet

    mesh = sharding_lib.make_mesh(spec.mesh_config, devices)

    def model_fn(rngs: nnx.Rngs):
        return CXRTrekNet(spec.model_config, rngs=rngs)

    split = step_lib.split_abstract_model(model_fn)
    abstract_params_state = nnx.state(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param)
    trainable = _trainable_mask(spec.model_config, abstract_params_state)
    tx = optimizer_lib.make_optimizer(spec.optim, trainable)
    shardings = step_lib.state_shardings(split, tx, mesh, spec.rules)
    train_step = step_lib.make_train_step(
        split, tx, spec.optim, shardings, trainable=trainable, seed=spec.seed, rules=spec.rules,
        image_label_weight=spec.image_label_weight,
    )
    return _Setup(mesh, model_fn, split, abstract_params_state, tx, shardings, train_step)


def _run_metadata(spec: TrainSpec, split: step_lib.SplitModel, metadata: Mapping[str, Any] | None) -> dict:
    """The checkpoint metadata: the caller's `metadata` plus the spec and the parameters' logical
    axis names."""
    from cxrtrek_jax.model import to_dict

    run_metadata = dict(metadata or {})
    run_metadata.update(
        model_config=to_dict(spec.model_config),
        optim_config=dataclasses.asdict(spec.optim),
        mesh_config=dataclasses.asdict(spec.mesh_config),
        seed=spec.seed,
        logical_axis_names=ckpt_lib.flatten_logical_names(split.logical_names),
    )
    return run_metadata


def _initial_params(spec: TrainSpec, setup: _Setup, init_params_from: str | None) -> Any:
    """Fresh parameters (from `spec.seed`), or those of the params checkpoint `init_params_from`
    (for a LoRA model its base model's, the adapters starting fresh)."""
    params_shardings = setup.shardings.params
    if init_params_from and spec.model_config.lora is not None:
        return ckpt_lib.load_params_into(
            init_params_from, step_lib.init_params(setup.model_fn, spec.seed, params_shardings),
            _lora_mask(setup.abstract_params_state))
    if init_params_from:
        return ckpt_lib.load_params(init_params_from, shardings=params_shardings)
    return step_lib.init_params(setup.model_fn, spec.seed, params_shardings)


def _restore_or_init(spec: TrainSpec, setup: _Setup, checkpointer: ckpt_lib.Checkpointer, batches,
                     run_metadata: Mapping[str, Any], init_params_from: str | None
                     ) -> tuple[step_lib.TrainState, int | None]:
    """(the state to train from, the restored checkpoint's step or None): the newest readable
    checkpoint (restoring `batches`' position too), else a step-0 state."""
    abstract_opt_state = jax.eval_shape(setup.tx.init, setup.split.abstract_params)
    restored = checkpointer.restore_latest(
        abstract_params=ckpt_lib.abstract_arrays(setup.split.abstract_params, setup.shardings.params),
        abstract_opt_state=ckpt_lib.abstract_arrays(abstract_opt_state, setup.shardings.opt_state),
        data_iterator=batches,
    )
    if restored is None:
        params = _initial_params(spec, setup, init_params_from)
        return step_lib.create_train_state(params, setup.tx, setup.shardings), None
    _warn_on_config_change(restored.metadata.get("model_config", {}), run_metadata["model_config"])
    step_array = jax.device_put(jax.numpy.int32(restored.step), setup.shardings.step)
    state = step_lib.TrainState(step=step_array, params=restored.params, opt_state=restored.opt_state)
    log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
    return state, restored.step


def run_training(
    spec: TrainSpec,
    *,
    checkpoint: ckpt_lib.CheckpointConfig,
    make_batches: Callable[[], Iterator[Mapping[str, Any]]],
    num_steps: int,
    init_params_from: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    hooks: TrainHooks = TrainHooks(),
    preemption: preemption_lib.PreemptionWatcher | None = None,
    devices: list[jax.Device] | None = None,
) -> TrainResult:
    """Train `spec` to `num_steps` optimizer steps, resuming from the newest readable checkpoint
    in `checkpoint.directory` if there is one.

    make_batches: returns a fresh checkpointable iterator of process-local batches (the batch
      contract of `data_pipeline.batches.grain_pipeline`, numpy, leading dim = global batch / process count).
    init_params_from: a params checkpoint (e.g. from `import-hf`) to start a fresh run from; for a
      LoRA model it may lack the adapters (a base model's checkpoint), which start fresh.
    metadata: extra JSON-able entries for the checkpoint metadata (e.g. tokenizer_path).
    hooks: the logging, start and evaluation callbacks (`TrainHooks`).
    preemption: the watcher to poll; by default one is installed for the duration of the call
      (SIGTERM -> checkpoint at the current step, return with stop_reason "preempted").
    devices: the mesh's devices (default: all).
    Raises NonFiniteError (naming the step) when a loss or gradient norm is NaN/Inf.
    """
    setup = _build(spec, devices)
    run_metadata = _run_metadata(spec, setup.split, metadata)
    batches = make_batches()
    _require_checkpointable(batches)
    owned_watcher = preemption is None
    watcher = preemption_lib.PreemptionWatcher() if owned_watcher else preemption
    if owned_watcher:
        watcher.install()
    checkpointer = ckpt_lib.Checkpointer(checkpoint)
    try:
        state, resumed_from = _restore_or_init(spec, setup, checkpointer, batches, run_metadata,
                                               init_params_from)
        if hooks.on_start is not None:
            hooks.on_start(0 if resumed_from is None else resumed_from)
        return _loop(state, setup, batches, checkpointer, resumed_from=resumed_from,
                     num_steps=num_steps, save_every=checkpoint.save_every, hooks=hooks,
                     metadata=run_metadata, preemption=watcher)
    finally:
        checkpointer.close()
        if owned_watcher:
            watcher.uninstall()


def _loop(state, setup: _Setup, batches, checkpointer, *, resumed_from: int | None, num_steps: int,
          save_every: int, hooks: TrainHooks, metadata, preemption) -> TrainResult:
    def save(step: int, state) -> None:
        metrics = dict(hooks.evaluate(state.params, step)) if hooks.evaluate else None
        checkpointer.save(step, params=state.params, opt_state=state.opt_state,
                          metadata=metadata, data_iterator=batches, metrics=metrics)

    def finish(step: int, metrics) -> dict[str, float]:
        preemption_lib.check_finite(step, metrics)
        summary = step_lib.summarize_metrics(metrics)
        if hooks.on_log and (step % hooks.log_every == 0 or step == num_steps):
            hooks.on_log(step, summary)
        return summary

    step, pending, summary = 0 if resumed_from is None else resumed_from, None, {}
    while step < num_steps:
        if preemption.should_stop(step):
            if pending is not None:
                summary = finish(*pending)
            save(step, state)
            return TrainResult(step, "preempted", resumed_from, summary)
        try:
            local_batch = next(batches)
        except StopIteration:
            log.warning("the batch iterator ended after step %d (of %d)", step, num_steps)
            if pending is not None:
                summary = finish(*pending)
            save(step, state)
            return TrainResult(step, "data_exhausted", resumed_from, summary)
        step_lib.check_batch(local_batch)
        state, metrics = setup.train_step(state, sharding_lib.put_batch(local_batch, setup.mesh))
        step += 1
        if pending is not None:
            summary = finish(*pending)
        pending = (step, metrics)
        if step % save_every == 0 or step == num_steps:
            summary = finish(*pending)
            pending = None
            save(step, state)
    if pending is not None:
        summary = finish(*pending)
    return TrainResult(step, "completed", resumed_from, summary)
