"""glibc malloc settings that keep a CPU train step's freed memory in the process.

XLA's CPU runtime allocates an executable's whole temporary buffer at every execution (1.56 GB
for the `small` preset's B8 x T512 step) and frees it after. By default glibc serves a block that
large with a fresh `mmap` and unmaps it on free (from a thread's arena always, whatever the
thresholds), so the kernel zero-fills its ~380,000 pages again at every step: 0.8 s of system time
per step on a 2-core machine, 3-5 s when another process ran in between. With one arena, no
`mmap` and no trimming, the block freed by one step is reused by the next.

Two forms of the same settings: `KEEP_FREED_MEMORY`, the `GLIBC_TUNABLES` value for a process
about to be started (glibc reads it at start-up; `benchmarks.bench_train` starts its side
processes with it), and `keep_freed_memory()`, `mallopt` calls for the running process, which take
effect only before XLA's CPU client starts its threads (before JAX's first device use: measured
on the `tiny` step, 29,000 page faults per step after, 4,400 when called before, as with the
tunables). `cxrtrek train` calls it first thing when JAX will run on CPU (`jax_runs_on_cpu`).
Nothing here imports JAX.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os

__all__ = ["KEEP_FREED_MEMORY", "keep_freed_memory", "jax_runs_on_cpu"]

KEEP_FREED_MEMORY = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"

# mallopt parameter numbers (glibc <malloc.h>); a trim threshold of -1 disables trimming.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

# Packages through which JAX finds an accelerator (TPU: libtpu; GPU: the CUDA / ROCm plugins).
_ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin")


def keep_freed_memory() -> bool:
    """Apply the settings of `KEEP_FREED_MEMORY` to this process with `mallopt`; False (nothing
    changed) where the C library is not glibc or refuses one of them. Call it before JAX first
    uses a device."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


def jax_runs_on_cpu(environ: dict[str, str] | None = None) -> bool:
    """Whether JAX in this process will compute on CPU, decided without importing it: the first
    platform of JAX_PLATFORMS when that is set, else True unless an accelerator plugin is
    installed (libtpu, a CUDA / ROCm plugin, or a `jax_plugins` entry point)."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    if any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES):
        return False
    return not list(importlib.metadata.entry_points(group="jax_plugins"))
