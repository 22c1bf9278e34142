"""Where a batched decoding step spends its time, and what this CPU's matrix kernels allow.

    python -m benchmarks.profile_decode_step --out benchmarks/results/decode_profile.json

Run it as `make bench-decode` runs (one core, one thread per framework). Two parts:

1. Per-op profile of one decoding step of the `small` model (`StepwiseDecoder`'s model call on one
   token per row over a KV cache, LM head included), at batch B and cache windows S: its time
   untraced (median of --steps calls), then JAX's Perfetto trace read back by
   `profile_train_step.profile_jax`, thunk time per op group (matrix products, reductions, copies,
   ...) and the heaviest ops (the trace's per-thunk events slow the step down; read its shares).
   A single call copies the cache it does not own (no donation on CPU); inside `answer_step`'s
   loop the carried cache is updated in place, so the copies here are an artefact of the call.
2. Matrix products as a decoding step makes them: x [M, 384] times 30 different [384, 1024] float32
   weights (47 MB in all, more than the caches hold, as a step streams its weights), for M = 1, 8
   and 32 rows, by JAX as compiled by default (XLA CPU hands matrix products to YNNPACK), by JAX
   with the products left to XLA's own (Eigen) kernels (`xla_cpu_experimental_ynn_fusion_type` =
   reductions only), and by PyTorch's `F.linear`. Weight bytes read per second and GFLOP/s.

The decode benchmark's bound assumes that weights stream at the rate of a plain sum over 256 MiB;
part 2 says how far the kernels that do the work are from it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

__all__ = ["DecodeStep", "matmul_stream", "main"]

EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
TRACE = {"xla_cpu_enable_xprof_traceme": True}


class DecodeStep:
    """One jitted decoding step of `model` (a `CXRTrekNet`) at `batch` rows over a `window`-slot cache
    (slot 100 written); `run(n)` runs it n times (the interface `profile_train_step.profile_jax` drives)."""

    def __init__(self, model, batch: int, window: int, compiler_options: dict[str, Any]):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from cxrtrek_jax.decoding.stepwise import _model

        graphdef, self.params = nnx.split(model)
        self.cache = model.init_cache(batch, window)
        self.tokens = jnp.zeros((batch,), jnp.int32)
        self.index = jnp.full((batch,), min(100, window - 1), jnp.int32)

        @functools.partial(jax.jit, compiler_options=compiler_options)
        def step(params, cache, tokens, index):
            logits, cache = _model(graphdef, params)(
                tokens[:, None], positions=index[:, None], segment_ids=jnp.ones((batch, 1), jnp.int32),
                cache=cache, cache_index=index)
            return logits, cache

        self._step = step

    def run(self, steps: int) -> None:
        import jax

        for _ in range(steps):
            out = self._step(self.params, self.cache, self.tokens, self.index)
        jax.block_until_ready(out)


def matmul_stream(rows: int, *, matrices: int = 30, k: int = 384, n: int = 1024, rounds: int = 10) -> dict[str, Any]:
    """x float32[rows, k] times `matrices` different [k, n] weights, summed (every product is used,
    and each implementation's sum is checked against numpy in float64): median milliseconds of
    `rounds` alternating rounds (`common.alternate`), weight GB/s and GFLOP/s per implementation."""
    from benchmarks import common
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    weights = [rng.random((k, n), np.float32) for _ in range(matrices)]
    x = rng.random((rows, k), np.float32)
    weight_bytes = matrices * k * n * 4
    flops = 2.0 * rows * k * n * matrices

    def jax_case(options):
        @functools.partial(jax.jit, compiler_options=options)
        def chain(x, ws):
            return sum((x @ w).sum() for w in ws)

        ws, xs = [jnp.asarray(w) for w in weights], jnp.asarray(x)
        return lambda: float(jax.block_until_ready(chain(xs, ws)))

    torch_weights = [torch.from_numpy(np.ascontiguousarray(w.T)) for w in weights]
    torch_x = torch.from_numpy(x)

    def torch_case():
        with torch.no_grad():
            return float(sum(torch.nn.functional.linear(torch_x, w).sum() for w in torch_weights))

    cases = {"jax (YNNPACK products)": jax_case({}), "jax (Eigen products)": jax_case(EIGEN_DOTS),
             "torch F.linear": torch_case}
    expected = float(sum((x.astype(np.float64) @ w).sum() for w in weights))
    for name, fn in cases.items():
        if not np.isclose(fn(), expected, rtol=1e-4):
            raise AssertionError(f"{name} computed {fn()}, float64 numpy {expected}")
    out = {}
    for name, timing in common.alternate(cases, rounds=rounds, warmup=0).items():
        ms = 1e3 * timing.median_s
        out[name] = {"ms": ms, "weight_gb_per_s": weight_bytes / ms / 1e6, "gflop_per_s": flops / ms / 1e6}
    return {"rows": rows, "k": k, "n": n, "matrices": matrices, "weight_mb": weight_bytes / 1e6, "methods": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_decode_step", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--windows", default="160,640", help="cache windows (slots), comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch
    from flax import nnx

    from benchmarks import common
    from benchmarks.bench_decode import MachineBound
    from cxrtrek_jax.model import CXRTrekNet, get_config
    from benchmarks.profile_train_step import profile_jax

    torch.set_num_threads(1)
    machine = MachineBound.measure()
    print(f"machine: {machine.flops_per_s / 1e9:.1f} GFLOP/s float32 matmul, {machine.bytes_per_s / 1e9:.1f} GB/s read")
    steps = {}
    model = CXRTrekNet(get_config(args.preset), rngs=nnx.Rngs(0))
    for window in (int(w) for w in args.windows.split(",")):
        for name, options in (("default", {}), ("eigen products", EIGEN_DOTS)):
            untraced = DecodeStep(model, args.batch, window, options)
            profile = profile_jax(DecodeStep(model, args.batch, window, {**TRACE, **options}), args.steps)
            timing = common.alternate({"step": lambda: untraced.run(1)}, rounds=args.steps)["step"]
            profile["untraced_ms_per_step"] = 1e3 * timing.median_s
            steps[f"window {window}, {name}"] = profile
            groups = ", ".join(f"{g} {s * 1e3:.2f}" for g, s in profile["groups_s_per_step"].items())
            print(f"decode step, batch {args.batch}, window {window}, {name}: {profile['untraced_ms_per_step']:.2f} ms "
                  f"(traced: {profile['wall_s_per_step'] * 1e3:.2f} ms wall; {groups} ms in ops)")
            for op, seconds in profile["top_ops"][:5]:
                print(f"    {seconds * 1e3:7.3f} ms  {op[:90]}")
    streams = [matmul_stream(rows) for rows in (1, 8, 32)]
    print("\nstreamed products (30 x [384, 1024] float32 weights, 47 MB):")
    for case in streams:
        for name, r in case["methods"].items():
            print(f"  M={case['rows']:2d}  {name:24s} {r['ms']:7.2f} ms  {r['weight_gb_per_s']:5.1f} GB/s  "
                  f"{r['gflop_per_s']:5.1f} GFLOP/s")
    results = {"machine": common.machine_info(), "machine_bound": {"flops_per_s": machine.flops_per_s,
                                                                   "bytes_per_s": machine.bytes_per_s},
               "config": vars(args), "decode_step": steps, "streamed_products": streams,
               "load_average_end": list(os.getloadavg())}
    common.write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
