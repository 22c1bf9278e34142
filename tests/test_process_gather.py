"""`train.process_gather.gather_ints`: one row per process, in process order; and
`checkpointing.check_same_step` over it (the slow test runs two real JAX processes)."""

import numpy as np
import pytest

from cxrtrek_jax.train.process_gather import gather_ints


def test_one_process_gives_its_values_as_one_int32_row():
    out = gather_ints([3, 0, 1])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.array([[3, 0, 1]], np.int32))
    assert gather_ints([-1]).tolist() == [[-1]]


_WORKER = """
import sys
import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from cxrtrek_jax.train import checkpointing as ck
from cxrtrek_jax.train.process_gather import gather_ints

me = jax.process_index()
print("rows", gather_ints([10 + me, 20 + me, me]).tolist(), flush=True)
ck.check_same_step(7, "ckpt")  # the same step everywhere: no error
try:
    ck.check_same_step(None if me else 5, "ckpt")
except ck.StepMismatchError as err:
    print("mismatch", err, flush=True)
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_gather_rows_in_process_order(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        coordinator = f"localhost:{s.getsockname()[1]}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, coordinator, str(i)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
        lines = output.splitlines()
        assert "rows [[10, 20, 0], [11, 21, 1]]" in lines, output
        assert [line for line in lines if line.startswith("mismatch")] == [
            "mismatch the processes restored different checkpoints from ckpt (process 0: step 5, "
            "process 1: none); they must start from the same step — check that every process sees "
            "the same checkpoint directory (a shared file system) and that no step was damaged on "
            "one host only"], output
