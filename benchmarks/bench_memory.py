"""Memory scaling under the FSDP rules: bytes of parameters + optimizer state per device.

    make bench-memory     # = python -m benchmarks.bench_memory --out benchmarks/results/memory.json

For the `small` preset the train state (fp32 parameters + AdamW moments + step counts) is
created for real on meshes of 1, 2, 4 and 8 simulated CPU devices (mesh `data=1, fsdp=N,
tensor=1`, the project's `LOGICAL_AXIS_RULES`), and each device's bytes are summed from the
arrays' `addressable_shards`. The same figure is computed abstractly (shapes + shardings on a
`jax.sharding.AbstractMesh`, nothing materialised) for `small` (as a cross-check of the real
arrays) and for `cxrtreknet-7b` at 1..256 devices. Ideal FSDP scaling is total / N; the
difference is the parameters the rules leave replicated (dimensions that the mesh axes do not
divide, and axes mapped to the size-1 `tensor` axis).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Any

__all__ = ["real_bytes_per_device", "abstract_bytes_per_device", "run_benchmark", "main"]

GIB = 1024**3
DEFAULT_REAL_COUNTS = (1, 2, 4, 8)
DEFAULT_ABSTRACT_COUNTS = (1, 2, 4, 8, 16, 64, 256)


def _split_and_tx(preset: str):
    from cxrtrek_jax.train import optimizer as optimizer_lib
    from cxrtrek_jax.train import step as step_lib
    from cxrtrek_jax.model import CXRTrekNet, get_config

    config = get_config(preset)
    split = step_lib.split_abstract_model(lambda rngs: CXRTrekNet(config, rngs=rngs))
    return split, optimizer_lib.make_optimizer(optimizer_lib.OptimConfig(weight_decay=0.1))


def _fsdp_mesh(count: int):
    import jax

    from cxrtrek_jax.train import sharding as sharding_lib

    if count > jax.device_count():
        raise ValueError(f"{count} devices requested, {jax.device_count()} available (set XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={count} before JAX starts)")
    return sharding_lib.make_mesh(sharding_lib.MeshConfig(data=1, fsdp=count, tensor=1), jax.devices()[:count])


def real_bytes_per_device(preset: str, count: int) -> dict[str, Any]:
    """Create the train state of `preset` on an fsdp=`count` mesh and sum each device's shard
    bytes. Returns max/min bytes per device (params, optimizer, total) and the global total."""
    import jax
    import numpy as np

    from cxrtrek_jax.train import step as step_lib

    split, tx = _split_and_tx(preset)
    mesh = _fsdp_mesh(count)
    shardings = step_lib.state_shardings(split, tx, mesh)
    host_params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), split.abstract_params)
    state = step_lib.create_train_state(host_params, tx, shardings)
    per_device = {}
    for part, tree in (("params", state.params), ("opt_state", state.opt_state)):
        sizes: dict[Any, int] = defaultdict(int)
        for leaf in jax.tree.leaves(tree):
            for shard in leaf.addressable_shards:
                sizes[shard.device] += shard.data.nbytes
        per_device[part] = sizes
    totals = {d: per_device["params"][d] + per_device["opt_state"][d] for d in mesh.devices.flat}
    global_bytes = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    return {
        "devices": count,
        "params_bytes_max": max(per_device["params"].values()),
        "opt_state_bytes_max": max(per_device["opt_state"].values()),
        "total_bytes_max": max(totals.values()),
        "total_bytes_min": min(totals.values()),
        "global_bytes": global_bytes,
    }


def abstract_bytes_per_device(preset: str, count: int) -> dict[str, Any]:
    """The same figure from shapes and shardings only, on an abstract fsdp=`count` mesh. Every
    shard of a leaf has the same shape, so the per-device bytes are equal on all devices."""
    import jax
    import numpy as np

    from cxrtrek_jax.train import sharding as sharding_lib
    from cxrtrek_jax.train import step as step_lib

    split, tx = _split_and_tx(preset)
    mesh = jax.sharding.AbstractMesh((1, count, 1), sharding_lib.MESH_AXES)
    shardings = step_lib.state_shardings(split, tx, mesh)
    abstract_opt_state = jax.eval_shape(tx.init, split.abstract_params)

    def shard_bytes(tree, tree_shardings):
        leaves = jax.tree.leaves(tree)
        specs = jax.tree.leaves(tree_shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
        return sum(int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, specs, strict=True))

    params = shard_bytes(split.abstract_params, shardings.params)
    opt_state = shard_bytes(abstract_opt_state, shardings.opt_state)
    global_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                       for x in jax.tree.leaves((split.abstract_params, abstract_opt_state)))
    return {"devices": count, "params_bytes": params, "opt_state_bytes": opt_state,
            "total_bytes": params + opt_state, "global_bytes": global_bytes}


def run_benchmark(real_counts=DEFAULT_REAL_COUNTS, abstract_counts=DEFAULT_ABSTRACT_COUNTS,
                  small_preset: str = "small", large_preset: str = "cxrtreknet-7b") -> dict[str, Any]:
    """All measurements; JSON-able."""
    from benchmarks import common

    return {
        "machine": common.machine_info(),
        "rules": "data=1, fsdp=N, tensor=1; cxrtrek_jax.train.sharding.LOGICAL_AXIS_RULES",
        "real": {small_preset: [real_bytes_per_device(small_preset, n) for n in real_counts]},
        "abstract": {
            small_preset: [abstract_bytes_per_device(small_preset, n) for n in real_counts],
            large_preset: [abstract_bytes_per_device(large_preset, n) for n in abstract_counts],
        },
    }


def _mib(n: float) -> str:
    return f"{n / 1024**2:.2f}"


def format_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"machine: {m['cpu']}, {m['jax_devices']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v != "absent"),
             f"rules: {results['rules']}"]
    for preset, rows in results["real"].items():
        abstract = {r["devices"]: r for r in results["abstract"][preset]}
        lines += [f"{preset} (real arrays, addressable_shards):",
                  "| devices | params MiB/dev | opt state MiB/dev | total MiB/dev (max) | x N / global | abstract MiB/dev |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            n = r["devices"]
            lines.append(f"| {n} | {_mib(r['params_bytes_max'])} | {_mib(r['opt_state_bytes_max'])} | "
                         f"{_mib(r['total_bytes_max'])} | {r['total_bytes_max'] * n / r['global_bytes']:.3f} | "
                         f"{_mib(abstract[n]['total_bytes'])} |")
    for preset, rows in results["abstract"].items():
        if preset in results["real"]:
            continue
        lines += [f"{preset} (abstract: shapes + shardings):",
                  "| devices | params GiB/dev | opt state GiB/dev | total GiB/dev | x N / global |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['devices']} | {r['params_bytes'] / GIB:.2f} | {r['opt_state_bytes'] / GIB:.2f} | "
                         f"{r['total_bytes'] / GIB:.2f} | {r['total_bytes'] * r['devices'] / r['global_bytes']:.3f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=list(DEFAULT_REAL_COUNTS),
                        help="device counts for the real arrays (simulated CPU devices)")
    parser.add_argument("--abstract-devices", type=int, nargs="+", default=list(DEFAULT_ABSTRACT_COUNTS))
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: simulate max(--devices) CPU devices; gpu: use the visible GPUs")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cpu":
        # Must happen before JAX initialises its backend.
        flag = f"--xla_force_host_platform_device_count={max(args.devices)}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import logging

    import jax

    counts = tuple(n for n in args.devices if n <= jax.device_count())
    if not counts:
        raise SystemExit(f"none of the device counts {args.devices} is available ({jax.device_count()} devices)")

    logging.getLogger("cxrtrek_jax.train.sharding").setLevel(logging.ERROR)
    from benchmarks import common

    results = run_benchmark(counts, tuple(args.abstract_devices))
    common.write_results(args.out, results)
    print(format_report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
