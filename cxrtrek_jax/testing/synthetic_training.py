"""Train a model preset on synthetic batches: the test scaffolding for sharding, checkpoints,
resume, pre-emption and fault injection (no data set, no tokenizer).

    python -m cxrtrek_jax.testing.synthetic_training --workdir /tmp/run --steps 20 --save-every 5 --mesh 2,2,2

It drives the library's `train.loop.run_training` over `synthetic_batches.synthetic_dataset`,
prints one line per step and, with `--metrics-file`, appends one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import jax

from cxrtrek_jax.model import get_config, override
from cxrtrek_jax.testing import synthetic_batches
from cxrtrek_jax.train import checkpointing as ckpt_lib
from cxrtrek_jax.train import optimizer as optimizer_lib
from cxrtrek_jax.train import preemption as preemption_lib
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train.loop import TrainHooks, TrainSpec, default_compute_dtype, run_training

__all__ = ["main"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cxrtrek_jax.testing.synthetic_training",
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
            TrainSpec(model_config, optim=optim, mesh_config=_mesh_config(args.mesh), seed=args.seed),
            checkpoint=checkpoint, make_batches=make_batches, num_steps=args.steps,
            init_params_from=args.init_params_from, hooks=TrainHooks(on_log=on_log),
        )
    except preemption_lib.NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"final_step": result.final_step, "stop_reason": result.stop_reason,
                      "resumed_from": result.resumed_from}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
