"""Shared benchmark plumbing: machine and version facts, alternating timed repetitions with
medians, the machine's measured fp32 matmul peak, and result output.

Timing rule used by every benchmark: the cases being compared run in alternation (round r runs
every case once, the order rotated each round so no case always follows the same one), each
timed call blocks until its work is done, and the figure reported is the median over rounds.
Other jobs on the machine slow every case alike within a round; the load average at start and
end is recorded with the results.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Timing",
    "alternate",
    "machine_info",
    "package_versions",
    "MatmulPeak",
    "matmul_cases",
    "measure_matmul_peak",
    "write_results",
]

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "grain", "numpy", "libtpu")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of one case over the timed rounds; `median_s` is what is reported."""

    name: str
    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the rounds were."""
        return (max(self.samples_s) - min(self.samples_s)) / self.median_s

    def to_json(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "samples_s": list(self.samples_s), "spread": self.spread}


def alternate(
    cases: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time each case `rounds` times, alternating between cases.

    cases: name -> callable that does one unit of work and returns only when it is finished
      (call `block_until_ready` / synchronise inside). Each case is first called `warmup`
      times untimed (compilation, caches). Round r runs the cases starting at index r mod n.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    if not cases:
        raise ValueError("no cases to time")
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            start = time.perf_counter()
            cases[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(name, tuple(s)) for name, s in samples.items()}


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """Installed versions of `names` ("absent" for those not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def machine_info(*, with_jax: bool = True) -> dict[str, Any]:
    """CPU, cores, load, Python, package versions, and (with_jax) JAX's backend and devices."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": package_versions(),
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS") if k in os.environ},
    }
    if with_jax:
        import jax

        devices = jax.devices()
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = f"{len(devices)} x {devices[0].device_kind}"
    return info


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
    """Measured fp32 matmul throughput (FLOP/s) of an n x n @ n x n product, per framework;
    `peak` is the best of them (the denominator of MFU)."""

    n: int
    flops_per_s: Mapping[str, float]

    @property
    def peak(self) -> float:
        return max(self.flops_per_s.values())

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "flops_per_s": dict(self.flops_per_s), "peak_flops_per_s": self.peak}


def matmul_cases(n: int, frameworks: Sequence[str] = ("jax", "torch"), *, torch_device: str = "cpu",
                 ) -> tuple[dict[str, Callable[[], Any]], float]:
    """Timing cases (framework -> callable) of an fp32 n x n matmul chain, and the FLOPs of one
    call (4 chained products of 2 n^3 each, so dispatch overhead is negligible). JAX runs on its
    default device, torch on `torch_device`."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)
    b = rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)
    chain = _MATMUL_CHAIN
    cases: dict[str, Callable[[], Any]] = {}
    if "jax" in frameworks:
        import jax
        import jax.numpy as jnp

        @jax.jit
        def jax_chain(x, y):
            for _ in range(chain):
                x = jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST)
            return x

        ja, jb = jnp.asarray(a), jnp.asarray(b)
        cases["jax"] = lambda: jax_chain(ja, jb).block_until_ready()
    if "torch" in frameworks:
        import torch

        ta, tb = torch.from_numpy(a).to(torch_device), torch.from_numpy(b).to(torch_device)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 peak, like Precision.HIGHEST in JAX

        def torch_chain():
            x = ta
            with torch.no_grad():
                for _ in range(chain):
                    x = x @ tb
            if x.is_cuda:
                torch.cuda.synchronize()
            return x

        cases["torch"] = torch_chain
    return cases, matmul_chain_flops(n)


_MATMUL_CHAIN = 4  # chained n x n products per `matmul_cases` call


def matmul_chain_flops(n: int) -> float:
    """FLOPs of one `matmul_cases` call at matrix size n: 4 chained products of 2 n^3 each."""
    return 2.0 * n**3 * _MATMUL_CHAIN


def measure_matmul_peak(n: int = 2048, rounds: int = 5, *, frameworks: Sequence[str] = ("jax", "torch")) -> MatmulPeak:
    """fp32 matmul FLOP/s on this machine, alternating the frameworks, median of `rounds`."""
    cases, flops = matmul_cases(n, frameworks)
    timings = alternate(cases, rounds=rounds, warmup=1)
    return MatmulPeak(n, {name: flops / t.median_s for name, t in timings.items()})


def write_results(path: str | os.PathLike | None, results: Mapping[str, Any]) -> None:
    """Write `results` as indented JSON to `path` (parents created); None writes nothing."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
