"""The training loop: mesh, sharded state, resume, steps, checkpoints, pre-emption and NaN stops.

`run_training(...)` is what `cxrtrek train` builds on; it takes a factory for the batch iterator
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
from flax import nnx

from cxrtrek_jax.train import checkpointing as ckpt_lib
from cxrtrek_jax.train import optimizer as optimizer_lib
from cxrtrek_jax.train import preemption as preemption_lib
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train import step as step_lib

__all__ = ["TrainResult", "run_training", "default_compute_dtype"]

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


def run_training(
    model_config,
    *,
    optim: optimizer_lib.OptimConfig,
    mesh_config: sharding_lib.MeshConfig,
    checkpoint: ckpt_lib.CheckpointConfig,
    make_batches: Callable[[], Iterator[Mapping[str, Any]]],
    num_steps: int,
    seed: int = 0,
    log_every: int = 1,
    on_log: StepCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    evaluate: Callable[[Any, int], Mapping[str, float]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    init_params_from: str | None = None,
    preemption: preemption_lib.PreemptionWatcher | None = None,
    devices: list[jax.Device] | None = None,
    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES,
    image_label_weight: float = 0.0,
) -> TrainResult:
    """Train `model_config` (a `cxrtrek_jax.model.ModelConfig`) to `num_steps` optimizer steps,
    resuming from the newest readable checkpoint in `checkpoint.directory` if there is one.

    make_batches: returns a fresh checkpointable iterator of process-local batches (the batch
      contract of `data_pipeline.batches.grain_pipeline`, numpy, leading dim = global batch / process count).
    on_log: called as on_log(step, summary) every `log_every` steps and at the last step.
    on_start: called as on_start(step) once the start is known: the restored checkpoint's step,
      or 0 for a fresh run (e.g. to drop log records of steps after it, which are redone).
    evaluate: optional (params, step) -> {"val_loss": ...} run at each save, `step` being the
      step of the checkpoint saved with it; passed to the checkpoint manager to keep the best steps.
    metadata: extra JSON-able entries for the checkpoint metadata (e.g. tokenizer_path).
    init_params_from: a params checkpoint (e.g. from `import-hf`) to start a fresh run from; for a
      LoRA model it may lack the adapters (a base model's checkpoint), which start fresh.
    preemption: the watcher to poll; by default one is installed for the duration of the call
      (SIGTERM -> checkpoint at the current step, return with stop_reason "preempted").
    image_label_weight: the auxiliary image-label loss's weight (`step.make_train_step`); > 0
      needs batches with image labels.
    Raises NonFiniteError (naming the step) when a loss or gradient norm is NaN/Inf.
    """
    from cxrtrek_jax.model import CXRTrekNet, to_dict

    mesh = sharding_lib.make_mesh(mesh_config, devices)

    def model_fn(rngs: nnx.Rngs):
        return CXRTrekNet(model_config, rngs=rngs)

    split = step_lib.split_abstract_model(model_fn)
    abstract_params_state = nnx.state(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param)
    trainable = _trainable_mask(model_config, abstract_params_state)
    tx = optimizer_lib.make_optimizer(optim, trainable)
    shardings = step_lib.state_shardings(split, tx, mesh, rules)
    train_step = step_lib.make_train_step(
        split, tx, optim, shardings, trainable=trainable, seed=seed, rules=rules,
        image_label_weight=image_label_weight,
    )
    run_metadata = dict(metadata or {})
    run_metadata.update(
        model_config=to_dict(model_config),
        optim_config=dataclasses.asdict(optim),
        mesh_config=dataclasses.asdict(mesh_config),
        seed=seed,
        logical_axis_names=ckpt_lib.flatten_logical_names(split.logical_names),
    )

    batches = make_batches()
    _require_checkpointable(batches)
    owned_watcher = preemption is None
    watcher = preemption_lib.PreemptionWatcher() if owned_watcher else preemption
    if owned_watcher:
        watcher.install()
    checkpointer = ckpt_lib.Checkpointer(checkpoint)
    try:
        abstract_opt_state = jax.eval_shape(tx.init, split.abstract_params)
        restored = checkpointer.restore_latest(
            abstract_params=ckpt_lib.abstract_arrays(split.abstract_params, shardings.params),
            abstract_opt_state=ckpt_lib.abstract_arrays(abstract_opt_state, shardings.opt_state),
            data_iterator=batches,
        )
        if restored is not None:
            _warn_on_config_change(restored.metadata.get("model_config", {}), run_metadata["model_config"])
            step_array = jax.device_put(jax.numpy.int32(restored.step), shardings.step)
            state = step_lib.TrainState(step=step_array, params=restored.params, opt_state=restored.opt_state)
            log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
        else:
            if init_params_from and model_config.lora is not None:
                params = ckpt_lib.load_params_into(
                    init_params_from, step_lib.init_params(model_fn, seed, shardings.params),
                    _lora_mask(abstract_params_state))
            elif init_params_from:
                params = ckpt_lib.load_params(init_params_from, shardings=shardings.params)
            else:
                params = step_lib.init_params(model_fn, seed, shardings.params)
            state = step_lib.create_train_state(params, tx, shardings)
        if on_start is not None:
            on_start(0 if restored is None else restored.step)
        return _loop(
            state, train_step, batches, mesh, checkpointer,
            start=0 if restored is None else restored.step,
            num_steps=num_steps, save_every=checkpoint.save_every, log_every=log_every,
            on_log=on_log, evaluate=evaluate, metadata=run_metadata,
            preemption=watcher,
            resumed_from=None if restored is None else restored.step,
        )
    finally:
        checkpointer.close()
        if owned_watcher:
            watcher.uninstall()


def _loop(state, train_step, batches, mesh, checkpointer, *, start, num_steps, save_every,
          log_every, on_log, evaluate, metadata, preemption, resumed_from) -> TrainResult:
    def save(step: int, state) -> None:
        metrics = dict(evaluate(state.params, step)) if evaluate else None
        checkpointer.save(step, params=state.params, opt_state=state.opt_state,
                          metadata=metadata, data_iterator=batches, metrics=metrics)

    def finish(step: int, metrics) -> dict[str, float]:
        preemption_lib.check_finite(step, metrics)
        summary = step_lib.summarize_metrics(metrics)
        if on_log and (step % log_every == 0 or step == num_steps):
            on_log(step, summary)
        return summary

    step, pending, summary = start, None, {}
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
        state, metrics = train_step(state, sharding_lib.put_batch(local_batch, mesh))
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
