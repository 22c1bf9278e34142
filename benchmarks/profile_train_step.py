"""Per-op profile of one training step, JAX vs PyTorch eager (where does the time go?).

    python -m benchmarks.profile_train_step --out benchmarks/results/profile.json

JAX: `jax.profiler.trace` around steps of the compiled train step (`bench_train.JaxTrainer`,
compiled with `xla_cpu_enable_xprof_traceme` so each XLA CPU thunk is a trace event); the
Perfetto trace is read back and the thunk time summed per kind: matrix products (`dot`,
`convolution`, and fusions whose name says so), other fusions / elementwise work, copies and
transposes, gathers/scatters, and the rest. PyTorch: `torch.profiler` over steps of
`bench_train.TorchTrainer` (eager), self CPU time per aten op, grouped the same way. Each side's
table lists the heaviest ops; the grouped shares are what BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import logging
import os
import sys
import tempfile
from collections import defaultdict
from typing import Any

__all__ = ["op_group", "profile_jax", "profile_torch", "main"]

_GROUPS = (
    ("matmul", ("dot", "conv", "gemm", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear",
                "aten::_convolution", "mkldnn", "xnn", "ynn")),
    ("copy/transpose", ("copy", "transpose", "aten::clone", "aten::contiguous", "aten::_to_copy", "bitcast",
                        "aten::copy_", "aten::permute")),
    ("gather/scatter", ("gather", "scatter", "aten::index", "aten::embedding", "dynamic-slice",
                        "dynamic-update-slice", "aten::masked_scatter", "sort")),
    ("softmax/attention", ("softmax", "scaled_dot_product", "flash_attention", "aten::_safe_softmax")),
    ("reduce", ("reduce", "aten::sum", "aten::mean", "aten::max", "aten::norm", "aten::_foreach_norm")),
    ("fused elementwise", ("fusion", "loop", "add", "multiply", "aten::mul", "aten::add", "aten::_foreach",
                           "aten::where", "aten::gelu", "aten::silu", "aten::rsqrt", "aten::pow", "aten::exp")),
)


def op_group(name: str) -> str:
    """The group of a JAX thunk / XLA op name or an aten op name (first matching group)."""
    lowered = name.lower()
    for group, needles in _GROUPS:
        if any(needle in lowered for needle in needles):
            return group
    return "other"


def _summarise(times: dict[str, float], total_s: float, steps: int, top: int) -> dict[str, Any]:
    groups: dict[str, float] = defaultdict(float)
    for name, seconds in times.items():
        groups[op_group(name)] += seconds
    covered = sum(times.values())
    return {
        "wall_s_per_step": total_s / steps,
        "op_s_per_step": covered / steps,
        "groups_s_per_step": {g: s / steps for g, s in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_ops": [(name, s / steps) for name, s in sorted(times.items(), key=lambda kv: -kv[1])[:top]],
    }


def profile_jax(trainer, steps: int, top: int = 15) -> dict[str, Any]:
    """Thunk times of `steps` steps of a compiled `bench_train.JaxTrainer`."""
    import time

    import jax

    trainer.run(1)  # warm
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            trainer.run(steps)
        total = time.perf_counter() - start
        files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
        if not files:
            raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {trace_dir}")
        with gzip.open(files[0], "rt") as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("ph") != "X" or "dur" not in event:
            continue
        name = str(event.get("name", ""))
        args = event.get("args", {}) or {}
        # Per-thunk events carry the HLO op; skip the enclosing executable / Python events.
        if "hlo_op" in args:
            times[str(args["hlo_op"])] += event["dur"] * 1e-6
        elif name.startswith(("ThunkExecutor", "PjitFunction", "PjRt", "$")):
            continue
        elif "." in name or name.startswith(("fusion", "dot", "copy", "transpose", "scatter", "gather")):
            times[name] += event["dur"] * 1e-6
    return _summarise(times, total, steps, top)


def profile_torch(trainer, steps: int, top: int = 15) -> dict[str, Any]:
    """Self CPU time per aten op over `steps` steps of a `bench_train.TorchTrainer`."""
    import time

    import torch

    trainer.run(1)  # warm
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.run(steps)
    total = time.perf_counter() - start
    times = {e.key: e.self_cpu_time_total * 1e-6 for e in prof.key_averages()}
    return _summarise(times, total, steps, top)


def format_report(results: dict[str, Any]) -> str:
    lines = []
    for side, r in results["sides"].items():
        lines.append(f"{side}: {r['wall_s_per_step']:.2f} s/step wall, {r['op_s_per_step']:.2f} s/step in ops")
        lines.append("  groups: " + ", ".join(f"{g} {s:.2f} s" for g, s in r["groups_s_per_step"].items()))
        for name, seconds in r["top_ops"]:
            lines.append(f"    {seconds * 1e3:8.1f} ms  {name[:100]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("cxrtrek_jax.train.sharding").setLevel(logging.ERROR)

    from benchmarks import bench_train, common
    from cxrtrek_jax.model import get_config

    bench = bench_train.TrainBenchConfig(preset=args.preset, batch=args.batch, seq_len=args.seq_len,
                                         images=args.images, torch_compile=False)
    model_config = get_config(args.preset)
    batch = bench_train.bench_batch(model_config, bench.batch, bench.seq_len, bench.images, bench.seed)
    jax_trainer = bench_train.JaxTrainer(model_config, bench, batch,
                                         compiler_options={"xla_cpu_enable_xprof_traceme": True})
    import torch

    with tempfile.TemporaryDirectory() as checkpoint_dir:
        bench_train._save_torch_checkpoint(jax_trainer.initial_params, model_config, checkpoint_dir)
        torch_trainer = bench_train.TorchTrainer(checkpoint_dir, model_config, bench, batch, torch.device("cpu"),
                                                 compile=False)
    results = {"machine": common.machine_info(), "config": vars(args),
               "sides": {"jax": profile_jax(jax_trainer, args.steps),
                         "torch_eager": profile_torch(torch_trainer, args.steps)},
               "load_average_end": list(os.getloadavg())}
    common.write_results(args.out, results)
    print(format_report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
