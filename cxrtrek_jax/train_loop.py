"""The training loop: mesh, sharded state, resume, steps, checkpoints, pre-emption and NaN stops.

`run_training(...)` is what `cxrtrek train` builds on; it takes a factory for the batch iterator
(a Grain iterator, whose position is checkpointed with the model so a resumed run sees exactly
the batches an uninterrupted one would). `main()` is a small driver over synthetic batches:

    python -m cxrtrek_jax.train_loop --workdir /tmp/run --steps 20 --save-every 5 --mesh 2,2,2

Loop, per optimizer step s -> s + 1: poll pre-emption (save at s and return if requested); take
the next batch (process-local rows -> global arrays); run the jitted step; check the previous
step's `finite` flag (one step late, so the host never waits for the device it just fed);
log; save every `save_every` steps (after checking that step's flag). A non-finite step raises
`NonFiniteError` without saving, so the newest checkpoint stays the last good one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
from flax import nnx

from cxrtrek_jax import checkpointing as ckpt_lib
from cxrtrek_jax import optimizer as optimizer_lib
from cxrtrek_jax import preemption as preemption_lib
from cxrtrek_jax import sharding as sharding_lib
from cxrtrek_jax import train_step as step_lib

__all__ = ["TrainResult", "run_training", "default_compute_dtype", "main"]

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
) -> TrainResult:
    """Train `model_config` (a `cxrtrek_jax.model.ModelConfig`) to `num_steps` optimizer steps,
    resuming from the newest readable checkpoint in `checkpoint.directory` if there is one.

    make_batches: returns a fresh checkpointable iterator of process-local batches (common.md
      fields, numpy, leading dim = global batch / process count).
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
        split, tx, optim, shardings, trainable=trainable, seed=seed, rules=rules
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


# --- Driver over synthetic batches -------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cxrtrek_jax.train_loop",
        description="Train a preset on synthetic batches (exercises sharding, checkpoints, resume).",
    )
    parser.add_argument("--workdir", required=True, help="checkpoint directory")
    parser.add_argument("--model", default="tiny", help="model preset")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="compute dtype (auto: bfloat16 on TPU/GPU, float32 on CPU)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--keep-last", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (one may be -1)")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics-file", help="append one JSON line per step: {step, loss, ...}")
    parser.add_argument("--sleep-per-step", type=float, default=0.0,
                        help="pause after each logged step, seconds (for fault-injection tests)")
    parser.add_argument("--sync-save", action="store_true", help="disable asynchronous saving")
    parser.add_argument("--init-params-from", help="params checkpoint to start a fresh run from")
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    return parser.parse_args(argv)


def _mesh_config(text: str) -> sharding_lib.MeshConfig:
    try:
        data, fsdp, tensor = (int(part) for part in text.split(","))
    except ValueError:
        raise SystemExit(f"--mesh must be three integers data,fsdp,tensor; got {text!r}") from None
    return sharding_lib.MeshConfig(data=data, fsdp=fsdp, tensor=tensor)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sharding_lib.initialize_distributed(
        sharding_lib.DistributedConfig(args.coordinator, args.num_processes, args.process_id)
    )
    from cxrtrek_jax import synthetic_batches
    from cxrtrek_jax.model import get_config, override

    dtype = default_compute_dtype() if args.dtype == "auto" else args.dtype
    model_config = override(get_config(args.model), {"dtype": dtype})
    spec = synthetic_batches.SyntheticSpec(
        batch_size=args.batch_size, seq_len=args.seq_len, vocab_size=model_config.vocab_size,
        image_token_id=model_config.image_token_id, tokens_per_image=model_config.tokens_per_image,
        max_images=model_config.max_images, image_size=model_config.vision.image_size,
        seed=args.seed,
    )

    def make_batches():
        dataset = synthetic_batches.synthetic_dataset(
            spec, args.steps, jax.process_index(), jax.process_count()
        )
        return iter(dataset)

    def on_log(step: int, summary: dict[str, float]) -> None:
        if args.metrics_file and jax.process_index() == 0:
            with open(args.metrics_file, "a") as f:
                f.write(json.dumps({"step": step, **summary}) + "\n")
        print(f"step {step}: loss {summary['loss']:.6f}", flush=True)
        if args.sleep_per_step:
            time.sleep(args.sleep_per_step)

    warmup = min(10, args.steps // 4)
    optim = optimizer_lib.OptimConfig(
        learning_rate=args.learning_rate, warmup_steps=warmup, total_steps=max(args.steps, warmup + 1),
        weight_decay=0.01, grad_accum_steps=args.grad_accum,
    )
    checkpoint = ckpt_lib.CheckpointConfig(
        directory=args.workdir, save_every=args.save_every, keep_last=args.keep_last,
        async_save=not args.sync_save,
    )
    try:
        result = run_training(
            model_config, optim=optim, mesh_config=_mesh_config(args.mesh),
            checkpoint=checkpoint, make_batches=make_batches, num_steps=args.steps,
            seed=args.seed, on_log=on_log, init_params_from=args.init_params_from,
        )
    except preemption_lib.NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"final_step": result.final_step, "stop_reason": result.stop_reason,
                      "resumed_from": result.resumed_from}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
