"""`cxrtrek_jax.cli.host_malloc`: the settings `cxrtrek train` applies to itself on CPU keep the memory
a worker thread frees for its next allocation (XLA CPU's per-step temporary buffer), and the CPU
check reads JAX_PLATFORMS as JAX does."""

import subprocess
import sys

import pytest

from cxrtrek_jax.cli import host_malloc

# A worker thread (XLA's runs the step) allocates, touches and frees a 256 MiB block twice; printed:
# the minor page faults of each round (pages may be transparent huge pages: counted in faults, not
# bytes).
_PROBE = """
import resource, sys, threading
import numpy as np
from cxrtrek_jax.cli import host_malloc
if sys.argv[1] == "keep":
    assert host_malloc.keep_freed_memory()
def work(out):
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = np.ones(32 * 2**20)  # 256 MiB through malloc, every page touched
        del block
        out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
faults = []
thread = threading.Thread(target=work, args=(faults,))
thread.start(); thread.join()
print(*faults)
"""


def _faults(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_kept_memory_is_reused_by_a_threads_next_allocation():
    first, second = _faults("default")
    assert first >= 100 and second > first // 2, f"default malloc: expected the block re-faulted, {first}, {second}"
    first, second = _faults("keep")
    assert first >= 100 and second < first // 10, f"keep_freed_memory: the second block faulted {second} (first {first})"


@pytest.mark.parametrize("platforms, on_cpu", [("cpu", True), ("cpu,tpu", True), (" CPU ", True),
                                               ("tpu", False), ("cuda,cpu", False)])
def test_jax_platforms_decides_the_backend(platforms, on_cpu):
    assert host_malloc.jax_runs_on_cpu({"JAX_PLATFORMS": platforms}) is on_cpu


def test_tunables_and_mallopt_say_the_same_settings():
    # KEEP_FREED_MEMORY (for a process about to start) names what keep_freed_memory() sets here.
    fields = dict(item.split("=") for item in host_malloc.KEEP_FREED_MEMORY.split(":"))
    assert fields["glibc.malloc.arena_max"] == "1" and fields["glibc.malloc.mmap_max"] == "0"
    assert int(fields["glibc.malloc.trim_threshold"]) >= 2**34  # trimming off in practice
