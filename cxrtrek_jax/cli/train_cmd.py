"""`cxrtrek train --experiment NAME [--preset P] [--set key=value ...] [--workdir DIR]`.

Experiments are the named, typed configs of the registry (`cxrtrek_jax.train.registry`:
the ablations and `demo`, what `make demo` trains; `--list` shows them);
`--set` overrides any field by dotted key (`--set optim.learning_rate=3e-4
--set data.kind=json --set data.path=/data/cxrtrek.json --set data.image_root=/data/images`).
The fully resolved config is printed (`--print-config` stops there) and written to
`WORKDIR/config.json`. A run resumes from `WORKDIR/checkpoints` when it holds one.
Multi-process: `--coordinator HOST:PORT --num-processes N --process-id I` (or the
environment of a TPU pod slice).
On CPU the process first sets glibc's malloc to keep the memory a step frees
(`cxrtrek_jax.cli.host_malloc`: XLA CPU's per-step temporary buffer is then reused instead of
unmapped and faulted back in, ~0.8 s per `small` step); `--default-malloc` leaves malloc alone.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cxrtrek_jax.cli import CLIError
from cxrtrek_jax.cli.mesh_args import add_distributed_arguments, start_processes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train an experiment (named config) with sharding and checkpoints",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="baseline", help="experiment name (see --list)")
    parser.add_argument("--preset", default=None, help="model preset: tiny, compact, small, cxrtreknet-7b, medgemma-4b")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by dotted key (repeatable)")
    parser.add_argument("--workdir", default=None, help="run directory (default: runs/EXPERIMENT)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="on CPU, leave glibc's malloc settings alone (default: keep freed memory "
                             "for the next step, see cxrtrek_jax.cli.host_malloc)")
    add_distributed_arguments(parser)
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.learning_rate=3e-4")
        out[key.strip()] = value
    return out


def resolve_experiment(name: str, preset: str | None, overrides: list[str]):
    """The experiment config after the preset and the overrides (CLIError on a bad name/key/value)."""
    from cxrtrek_jax.train.registry import get_experiment

    try:
        cfg = get_experiment(name, preset or "small")
        return cfg.override(parse_overrides(overrides)) if overrides else cfg
    except ValueError as err:
        raise CLIError(str(err)) from None


def _keep_freed_memory_on_cpu(default_malloc: bool) -> None:
    """`host_malloc.keep_freed_memory()` when JAX will run on CPU, said on the console; before
    anything starts JAX's CPU client (its threads must not have arenas of their own yet). Not when
    JAX is already imported (`cli.main` called inside a running program, e.g. a test): too late to
    help there, and that process's malloc is not the command's to change."""
    from cxrtrek_jax.cli import host_malloc

    if default_malloc or "jax" in sys.modules or not host_malloc.jax_runs_on_cpu():
        return
    if host_malloc.keep_freed_memory():
        print("CPU run: glibc malloc keeps freed memory (one arena, no mmap, no trim), so XLA's "
              "per-step temporary buffer is reused (--default-malloc: off)", flush=True)
    else:
        print("CPU run: could not set glibc's malloc options (not glibc?); each step may re-fault its "
              "temporary buffer", flush=True)


def run(args: argparse.Namespace) -> int:
    if not (args.list or args.print_config):
        _keep_freed_memory_on_cpu(args.default_malloc)
    from cxrtrek_jax.train.registry import EXPERIMENTS, get_experiment

    if args.list:
        for name in EXPERIMENTS:
            print(f"{name:16s} {get_experiment(name, 'tiny').description}")
        return 0
    cfg = resolve_experiment(args.experiment, args.preset, args.overrides)
    if args.print_config:
        print(cfg.to_json())
        return 0
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    start_processes(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cxrtrek_jax.train.preemption import NonFiniteError
    from cxrtrek_jax.train.run import train_experiment

    workdir = args.workdir or f"runs/{cfg.name}"
    print(f"experiment {cfg.name} ({cfg.description}); model preset dims "
          f"vision {cfg.model.vision.width}x{cfg.model.vision.depth}, text {cfg.model.text.embed_dim}x"
          f"{cfg.model.text.num_layers}; workdir {workdir}", flush=True)
    try:
        result = train_experiment(cfg, workdir, progress=not args.no_progress)
    except NonFiniteError as err:
        raise CLIError(str(err)) from None
    resumed = "" if result.resumed_from is None else f", resumed from step {result.resumed_from}"
    print(f"done: step {result.final_step} ({result.stop_reason}{resumed}); "
          f"loss {result.last_metrics.get('loss', float('nan')):.4f}; checkpoints in {workdir}/checkpoints")
    return 0
