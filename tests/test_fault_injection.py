"""Fault injection through the real entry point: `cxrtrek train` subprocesses on phantom data with
the tiny preset, hard-killed (SIGKILL), pre-empted (SIGTERM), restarted over a corrupted newest
checkpoint, and run as two processes of which one is killed. Each case asserts that the final
parameters are bit-identical to an uninterrupted run's, that the per-step losses are the same,
and that `metrics.jsonl` holds every step once (docs/training.md: "What survives what").

Every case is `slow` (`make test-slow`); the default suite keeps the SIGTERM pre-emption test (test_preemption.py).
"""

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cxrtrek_jax.train import checkpointing as ck

STEPS = 12
SAVE_EVERY = 3
TIMEOUT_S = 600

# The tiny preset on a small phantom set (20 studies: 2 in validation, one per process of the
# two-process case): a run is seconds once its step is compiled (the compilation cache is shared
# by every run of the module).
TRAIN_ARGS = [
    "--experiment", "baseline", "--preset", "tiny", "--no-progress",
    "--set", "data.phantom_studies=20", "--set", "data.phantom_size=64",
    "--set", "data.length_buckets=256,512", "--set", "data.global_batch_size=2",
    "--set", "tokenizer.vocab_size=400", "--set", "optim.warmup_steps=2",
    "--set", "optim.total_steps=40", "--set", f"train.num_steps={STEPS}",
    "--set", "train.eval_batches=1", "--set", f"checkpoint.save_every={SAVE_EVERY}",
    "--set", "checkpoint.keep_last=5",
]


def _start(workdir, data_dir, cache_dir, *extra, devices=2, log_every=1):
    """A `cxrtrek train` subprocess (stdout and stderr together) on `devices` CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    command = [sys.executable, "-m", "cxrtrek_jax.cli", "train", *TRAIN_ARGS,
               "--set", f"data.path={data_dir}", "--set", f"train.log_every={log_every}",
               "--workdir", str(workdir), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(process) -> str:
    out, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, out
    return out


def _records(workdir, split="train"):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            continue
    return [r for r in rows if r["split"] == split]


def _losses(workdir) -> dict[int, float]:
    """{step: loss} of the train records, asserting that no step is logged twice."""
    steps = [r["step"] for r in _records(workdir)]
    assert len(steps) == len(set(steps)), f"steps logged more than once in {workdir}: {steps}"
    return {r["step"]: r["loss"] for r in _records(workdir)}


def _wait_for_step(process, workdir, step):
    """Wait until `workdir`'s log holds train step >= `step` (the run must still be going)."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        logged = max((r["step"] for r in _records(workdir)), default=0)
        if logged >= step:
            return logged
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.01)
    raise TimeoutError(f"{workdir} did not reach step {step}")


def _assert_same_params(workdir, reference):
    """The final checkpoints of the two runs hold exactly the same parameters."""
    got = ck.load_params(pathlib.Path(workdir) / "checkpoints", step=STEPS)
    want = ck.load_params(pathlib.Path(reference) / "checkpoints", step=STEPS)
    got_leaves, want_leaves = jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for (path, a), b in zip(got_leaves, want_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def _assert_validation_at_checkpoints(workdir, extra_steps=()):
    """One validation row per saved step, carrying that step."""
    want = sorted(set(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY)) | set(extra_steps))
    assert [r["step"] for r in _records(workdir, "validation")] == want


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run; the phantom data and compilation cache the other runs reuse."""
    tmp = tmp_path_factory.mktemp("faults")
    data, cache = tmp / "phantom", tmp / "jax_cache"
    out = _finish(_start(tmp / "reference", data, cache))
    assert f"done: step {STEPS} (completed)" in out
    losses = _losses(tmp / "reference")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return {"tmp": tmp, "data": data, "cache": cache, "run": tmp / "reference", "losses": losses}


@pytest.mark.slow  # ~85 s; make test keeps the SIGTERM pre-emption case (test_preemption)
def test_sigkill_at_a_random_step_then_restart_loses_nothing(reference):
    tmp, rng = reference["tmp"], random.Random()
    kill_after = rng.randint(SAVE_EVERY + 1, STEPS - 2)  # steps remain after it
    workdir = tmp / "sigkill"
    victim = _start(workdir, reference["data"], reference["cache"])
    logged = _wait_for_step(victim, workdir, kill_after)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    # The newest finished checkpoint (none if the kill beat the first asynchronous save).
    with ck.Checkpointer(ck.CheckpointConfig(directory=str(workdir / "checkpoints"))) as stored:
        newest = max(stored.steps(), default=0)
    assert newest < STEPS, f"killed after step {logged}: too late, nothing left to resume"

    out = _finish(_start(workdir, reference["data"], reference["cache"]))
    resumed = f", resumed from step {newest}" if newest else ""
    assert f"done: step {STEPS} (completed{resumed})" in out, out
    # Every step once (the killed run's records after its last checkpoint were dropped), each
    # with the uninterrupted run's loss, bit for bit; same final parameters.
    assert _losses(workdir) == reference["losses"], f"killed after step {logged}"
    _assert_same_params(workdir, reference["run"])
    _assert_validation_at_checkpoints(workdir)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_exits_zero_and_restart_loses_nothing(reference):
    """log_every=2 with saves every 3 steps: the pre-emption checkpoint's validation row carries
    its own step, not the last logged one."""
    tmp = reference["tmp"]
    workdir = tmp / "sigterm"
    victim = _start(workdir, reference["data"], reference["cache"], log_every=2)
    _wait_for_step(victim, workdir, 4)  # training (and its SIGTERM handler) has started
    victim.send_signal(signal.SIGTERM)
    out, _ = victim.communicate(timeout=TIMEOUT_S)
    assert victim.returncode == 0, out
    assert "(preempted)" in out, out
    stopped = int(out.split("done: step ")[1].split()[0])
    assert 4 <= stopped < STEPS
    with ck.Checkpointer(ck.CheckpointConfig(directory=str(workdir / "checkpoints"))) as stored:
        assert max(stored.steps()) == stopped  # checkpointed at the step it stopped at

    out = _finish(_start(workdir, reference["data"], reference["cache"], log_every=2))
    assert f"done: step {STEPS} (completed, resumed from step {stopped})" in out, out
    logged = [s for s in range(1, STEPS + 1) if s % 2 == 0]
    assert _losses(workdir) == {s: reference["losses"][s] for s in logged}
    _assert_same_params(workdir, reference["run"])
    _assert_validation_at_checkpoints(workdir, extra_steps=[stopped])


@pytest.mark.slow
def test_a_corrupted_newest_checkpoint_falls_back_logs_it_and_finishes(reference):
    tmp = reference["tmp"]
    workdir = tmp / "corrupt"
    # Stop after 2 saves (steps 3, 6): a shorter run, so where it stops is not a race.
    first = 2 * SAVE_EVERY
    _finish(_start(workdir, reference["data"], reference["cache"], "--set", f"train.num_steps={first}"))
    params = workdir / "checkpoints" / str(first) / "params"
    largest = max((p for p in params.rglob("*") if p.is_file() and p.parent.name == "d"),
                  key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit in the parameters' bytes
    largest.write_bytes(bytes(data))

    out = _finish(_start(workdir, reference["data"], reference["cache"]))
    assert f"skipping checkpoint step {first}" in out and "fails its CRC-32 checksum" in out, out
    assert f"moved corrupt checkpoint step {first}" in out, out
    assert f"restored step {SAVE_EVERY} instead" in out, out
    assert f"done: step {STEPS} (completed, resumed from step {SAVE_EVERY})" in out, out
    assert len(list((workdir / "checkpoints" / ck.UNREADABLE_DIR).iterdir())) == 1
    assert _losses(workdir) == reference["losses"]  # steps 4-6 redone, logged once
    _assert_same_params(workdir, reference["run"])
    _assert_validation_at_checkpoints(workdir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_two(workdir, data_dir, cache_dir):
    coordinator = f"localhost:{_free_port()}"
    return [_start(workdir, data_dir, cache_dir, "--coordinator", coordinator, "--num-processes", "2",
                   "--process-id", str(i), devices=1) for i in range(2)]


@pytest.mark.slow
def test_two_processes_one_killed_both_restarted_lose_nothing(reference):
    """2 processes x 1 CPU device, against an uninterrupted 2-process run (the same device
    layout, so the same reductions): process 1 is SIGKILLed mid-run; process 0, left waiting at
    a collective, is given 60 s to fail by itself and is then killed too (what a pod's scheduler
    does); both restart from the shared checkpoints. The uninterrupted run starts on a fresh
    phantom dir, so process 0 generates the data behind the barrier while process 1 waits."""
    tmp = reference["tmp"]
    data = tmp / "phantom_two"
    straight = tmp / "two_straight"
    outputs = [_finish(p) for p in _start_two(straight, data, reference["cache"])]
    assert all(f"done: step {STEPS} (completed)" in out for out in outputs), outputs
    assert sorted(_losses(straight)) == list(range(1, STEPS + 1))

    workdir = tmp / "two_killed"
    victims = _start_two(workdir, data, reference["cache"])
    _wait_for_step(victims[0], workdir, random.Random().randint(SAVE_EVERY + 1, STEPS - 2))
    victims[1].send_signal(signal.SIGKILL)
    victims[1].wait(timeout=60)
    try:
        victims[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        victims[0].send_signal(signal.SIGKILL)
        victims[0].wait(timeout=60)
    assert victims[0].returncode != 0 and victims[1].returncode == -signal.SIGKILL
    with ck.Checkpointer(ck.CheckpointConfig(directory=str(workdir / "checkpoints"))) as stored:
        newest = max(stored.steps(), default=0)
    assert newest < STEPS

    outputs = [_finish(p) for p in _start_two(workdir, data, reference["cache"])]
    resumed = f", resumed from step {newest}" if newest else ""
    assert all(f"done: step {STEPS} (completed{resumed})" in out for out in outputs), outputs
    assert _losses(workdir) == _losses(straight)
    _assert_same_params(workdir, straight)
    _assert_validation_at_checkpoints(workdir)
