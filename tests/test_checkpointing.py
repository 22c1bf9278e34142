"""Orbax checkpoints: items, restore onto other meshes, retention, Grain iterators, damaged steps,
params-only save/load, and (slow) bit-exact resume after a hard kill."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cxrtrek_jax.train import checkpointing as ck
from cxrtrek_jax.train import sharding as sh

NAMES = {
    "layers": {0: {"kernel": ("embed", "mlp")}, 1: {"kernel": ("embed", "mlp")}},
    "norm": {"scale": ("embed",)},
}


def _params(offset=0.0):
    return {
        "layers": {i: {"kernel": jnp.arange(64, dtype=jnp.float32).reshape(8, 8) + i + offset}
                   for i in range(2)},
        "norm": {"scale": jnp.ones((8,), jnp.float32) + offset},
    }


def _opt_state(params):
    return {"mu": jax.tree.map(lambda x: 0.5 * x, params), "count": jnp.int32(7)}


def _placed(mesh, offset=0.0):
    params = _params(offset)
    param_sh = sh.tree_shardings(params, NAMES, mesh)
    opt_sh = {"mu": param_sh, "count": sh.replicated(mesh)}
    params = jax.device_put(params, param_sh)
    return params, _opt_state(params), param_sh, opt_sh


def _targets(mesh):
    params, opt_state, param_sh, opt_sh = _placed(mesh)
    return ck.abstract_arrays(params, param_sh), ck.abstract_arrays(opt_state, opt_sh)


def _config(tmp_path, **kwargs):
    return ck.CheckpointConfig(directory=str(tmp_path / "ckpt"), **kwargs)


def _save_steps(config, steps, mesh, metrics=None, iterator=None):
    with ck.Checkpointer(config) as checkpointer:
        for step in steps:
            params, opt_state, _, _ = _placed(mesh, offset=float(step))
            checkpointer.save(step, params=params, opt_state=opt_state,
                              metadata={"model_config": {"name": "toy"},
                                        "logical_axis_names": ck.flatten_logical_names(NAMES)},
                              data_iterator=iterator,
                              metrics=None if metrics is None else metrics(step))
    return config


@pytest.mark.parametrize("target", ["one_device", "four_devices"])
def test_save_on_eight_devices_restore_on_fewer(tmp_path, target):
    mesh8 = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    config = _save_steps(_config(tmp_path), [5], mesh8)
    devices = jax.devices()[:1] if target == "one_device" else jax.devices()[4:]
    mesh = sh.make_mesh(sh.MeshConfig(data=1, fsdp=-1, tensor=1), devices)
    abstract_params, abstract_opt = _targets(mesh)
    with ck.Checkpointer(config) as checkpointer:
        restored = checkpointer.restore_latest(abstract_params=abstract_params,
                                               abstract_opt_state=abstract_opt)
    assert restored.step == 5
    assert restored.metadata["step"] == 5 and restored.metadata["model_config"] == {"name": "toy"}
    expected = _params(5.0)
    for got, want in zip(jax.tree.leaves(restored.params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    kernel = restored.params["layers"][1]["kernel"]
    assert kernel.sharding.device_set == set(devices)
    if target == "four_devices":
        assert kernel.sharding.spec == P("fsdp")
    assert int(restored.opt_state["count"]) == 7
    np.testing.assert_array_equal(np.asarray(restored.opt_state["mu"]["norm"]["scale"]), 3.0)


def test_load_params_alone_onto_a_mesh_or_one_device(tmp_path):
    mesh8 = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    config = _save_steps(_config(tmp_path), [1, 2], mesh8)
    params = ck.load_params(config.directory)
    assert set(params["layers"]) == {0, 1}  # list indices come back as ints
    np.testing.assert_array_equal(np.asarray(params["norm"]["scale"]), 3.0)
    assert len(params["norm"]["scale"].sharding.device_set) == 1
    mesh4 = sh.make_mesh(sh.MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    sharded = ck.load_params(config.directory, step=1, mesh=mesh4)
    assert sharded["layers"][0]["kernel"].sharding.spec == P("fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(sharded["norm"]["scale"]), 2.0)
    assert ck.read_metadata(config.directory)["step"] == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint step 9"):
        ck.load_params(config.directory, step=9)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load_params(tmp_path / "nowhere")


def test_keeps_last_n_plus_best_by_validation_loss(tmp_path):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    val_loss = {1: 3.0, 2: 0.5, 3: 2.0, 4: 2.5, 5: 4.0, 6: 3.5}
    config = _save_steps(_config(tmp_path, keep_last=2, keep_best=1), range(1, 7), mesh,
                         metrics=lambda step: {"val_loss": val_loss[step]})
    with ck.Checkpointer(config) as checkpointer:
        assert checkpointer.steps() == [2, 5, 6]


def test_grain_iterator_position_is_restored(tmp_path):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    dataset = grain.MapDataset.range(100).map(lambda i: i * 3)
    iterator = iter(dataset)
    for _ in range(4):
        next(iterator)
    config = _save_steps(_config(tmp_path), [4], mesh, iterator=iterator)
    fresh = iter(dataset)
    abstract_params, abstract_opt = _targets(mesh)
    with ck.Checkpointer(config) as checkpointer:
        restored = checkpointer.restore_latest(abstract_params=abstract_params,
                                               abstract_opt_state=abstract_opt, data_iterator=fresh)
    assert restored.data_iterator is fresh
    assert [next(fresh) for _ in range(2)] == [12, 15]


def _damage(step_dir: pathlib.Path, how: str) -> None:
    data_files = sorted((p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
                        key=lambda p: p.stat().st_size)
    if how == "truncated":  # the merged OCDBT data file (params/d/*) that restores read
        with open(next((step_dir / "params" / "d").iterdir()), "r+b") as f:
            f.truncate(3)
    elif how == "missing":
        (step_dir / "metadata" / "metadata").unlink()
    elif how == "flipped":  # one bit of the largest data file: only the checksum manifest sees it
        data = bytearray(data_files[-1].read_bytes())
        data[len(data) // 2] ^= 0x04
        data_files[-1].write_bytes(bytes(data))
    else:
        raise ValueError(how)


def test_finished_steps_get_checksum_manifests_and_deleted_steps_lose_them(tmp_path):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    config = _save_steps(_config(tmp_path, keep_last=2, keep_best=0), [1, 2, 3], mesh)
    root = pathlib.Path(config.directory)
    assert sorted(p.name for p in (root / ck.CHECKSUMS_DIR).iterdir()) == ["2.json", "3.json"]
    listed = json.loads((root / ck.CHECKSUMS_DIR / "3.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(root / "3")) for p in (root / "3").rglob("*") if p.is_file())
    assert sorted(listed) == on_disk
    with ck.Checkpointer(config) as checkpointer:
        assert checkpointer.verify_step(3, with_data_iterator=False) == []
        assert checkpointer.verify_step(3, with_data_iterator=True) == ["item 'data_iterator' is missing"]


@pytest.mark.parametrize("how", ["truncated", "missing", "flipped"])
def test_damaged_newest_step_is_skipped_and_previous_restored(tmp_path, caplog, capsys, how):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    config = _save_steps(_config(tmp_path, keep_last=5), [1, 2, 3], mesh)
    root = pathlib.Path(config.directory)
    _damage(root / "3", how)
    (root / "4.orbax-checkpoint-tmp-1700000000").mkdir()  # a save that never finished
    abstract_params, abstract_opt = _targets(mesh)
    with caplog.at_level(logging.WARNING, logger=ck.__name__):
        with ck.Checkpointer(config) as checkpointer:
            restored = checkpointer.restore_latest(abstract_params=abstract_params,
                                                   abstract_opt_state=abstract_opt)
            assert restored.step == 2
            np.testing.assert_array_equal(np.asarray(restored.params["norm"]["scale"]), 3.0)
            assert checkpointer.steps() == [1, 2]
            # The damaged step was moved aside, so training can save step 3 again.
            params, opt_state, _, _ = _placed(mesh, offset=30.0)
            checkpointer.save(3, params=params, opt_state=opt_state, metadata={})
    evidence = {"truncated": "has 3 bytes", "missing": "metadata/metadata is missing",
                "flipped": "fails its CRC-32 checksum"}[how]
    for text in (caplog.text, capsys.readouterr().err):  # on the log and on the console
        assert "skipping checkpoint step 3" in text and "corrupt" in text and evidence in text
        assert "moved corrupt checkpoint step 3" in text and "restored step 2 instead" in text
    assert "4.orbax-checkpoint-tmp-1700000000" in caplog.text
    moved = list((root / ck.UNREADABLE_DIR).iterdir())
    assert len(moved) == 1 and (moved[0] / "checksums.json").exists()
    np.testing.assert_array_equal(np.asarray(ck.load_params(root)["norm"]["scale"]), 31.0)


def test_without_a_manifest_storage_errors_still_prove_corruption(tmp_path):
    """A step killed between its write and its checksums: TensorStore's own checks decide."""
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    config = _save_steps(_config(tmp_path, keep_last=5), [1, 2], mesh)
    root = pathlib.Path(config.directory)
    (root / ck.CHECKSUMS_DIR / "2.json").unlink()
    _damage(root / "2", "truncated")
    with ck.Checkpointer(config) as checkpointer:
        restored = checkpointer.restore_latest(abstract_params=_targets(mesh)[0],
                                               abstract_opt_state=_targets(mesh)[1])
        assert restored.step == 1 and checkpointer.steps() == [1]


def test_an_intact_step_that_does_not_fit_is_an_error_and_nothing_moves(tmp_path):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    config = _save_steps(_config(tmp_path), [1, 2], mesh)
    wrong_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct((3,) + x.shape, x.dtype,
                                                               sharding=x.sharding),
                                _targets(mesh)[0])
    with ck.Checkpointer(config) as checkpointer:
        with pytest.raises(ck.CheckpointRestoreError,
                           match=r"checkpoint step 2 in .* could not be restored, but it is not corrupt"):
            checkpointer.restore_latest(abstract_params=wrong_params,
                                        abstract_opt_state=_targets(mesh)[1])
        assert checkpointer.steps() == [1, 2]
    assert not (pathlib.Path(config.directory) / ck.UNREADABLE_DIR).exists()


def test_every_step_corrupt_is_an_error_listing_each_and_nothing_moves(tmp_path):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    config = _save_steps(_config(tmp_path), [1, 2], mesh)
    for step in (1, 2):
        _damage(pathlib.Path(config.directory) / str(step), "missing")
    with ck.Checkpointer(config) as checkpointer:
        with pytest.raises(ck.NoRestorableCheckpointError,
                           match=r"every step is corrupt \(step 2: .*missing; step 1: .*missing\)"):
            checkpointer.restore_latest(abstract_params=_targets(mesh)[0],
                                        abstract_opt_state=_targets(mesh)[1])
        assert checkpointer.steps() == [1, 2]


@pytest.mark.parametrize("failures", [2, 99])
def test_transient_read_errors_are_retried_never_rolled_back(tmp_path, capsys, failures):
    mesh = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    config = _save_steps(_config(tmp_path), [1, 2], mesh)
    with ck.Checkpointer(config) as checkpointer:
        checkpointer.retry_backoff_s = 0.01
        real_restore, calls = checkpointer.restore, []

        def flaky(step, **kwargs):
            calls.append(step)
            if len(calls) <= failures:
                raise ConnectionResetError(104, "Connection reset by peer")
            return real_restore(step, **kwargs)

        checkpointer.restore = flaky
        targets = dict(abstract_params=_targets(mesh)[0], abstract_opt_state=_targets(mesh)[1])
        if failures < checkpointer.restore_attempts:
            assert checkpointer.restore_latest(**targets).step == 2
            assert calls == [2] * (failures + 1)
            assert "attempt 2 of 4, transient: ConnectionResetError" in capsys.readouterr().err
        else:
            with pytest.raises(ck.CheckpointRestoreError,
                               match=r"step 2 .* after 4 attempts \(transient error: ConnectionResetError"):
                checkpointer.restore_latest(**targets)
            assert calls == [2] * 4  # never fell back to step 1
        assert checkpointer.steps() == [1, 2]


def test_processes_that_restored_different_steps_are_an_error():
    ck.check_same_step(4, "ckpt", gather=lambda step: [step, step])
    ck.check_same_step(None, "ckpt", gather=lambda step: [step, step])
    with pytest.raises(ck.StepMismatchError, match=r"process 0: step 4, process 1: step 2"):
        ck.check_same_step(4, "ckpt", gather=lambda step: [step, 2])
    with pytest.raises(ck.StepMismatchError, match=r"process 0: step 4, process 1: none"):
        ck.check_same_step(4, "ckpt", gather=lambda step: [step, -1])


def test_save_params_only_for_import(tmp_path):
    directory = tmp_path / "imported"
    ck.save_params_only(directory, _params(1.0), model_config={"text": {"num_layers": 2}},
                        logical_names=NAMES, tokenizer_path="/tok")
    metadata = ck.read_metadata(directory)
    assert metadata["step"] == 0 and metadata["tokenizer_path"] == "/tok"
    assert metadata["model_config"] == {"text": {"num_layers": 2}}
    assert metadata["logical_axis_names"]["layers/1/kernel"] == ["embed", "mlp"]
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=4, tensor=1))
    params = ck.load_params(directory, mesh=mesh)
    assert params["layers"][1]["kernel"].sharding.spec == P("fsdp")
    np.testing.assert_array_equal(np.asarray(params["layers"][1]["kernel"]),
                                  np.asarray(_params(1.0)["layers"][1]["kernel"]))
    with pytest.raises(FileExistsError, match="already holds checkpoint steps"):
        ck.save_params_only(directory, _params(), model_config={})


# --- Exact resume after SIGKILL (slow: three training processes) -------------------------------

def _driver(workdir, metrics_file, steps, cache_dir, extra=()):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    command = [sys.executable, "-m", "cxrtrek_jax.testing.synthetic_training", "--workdir", str(workdir),
               "--steps", str(steps), "--mesh", "2,2,2", "--save-every", "4", "--keep-last", "5",
               "--metrics-file", str(metrics_file), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _losses(metrics_file):
    rows = [json.loads(line) for line in pathlib.Path(metrics_file).read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.mark.slow
def test_resume_after_hard_kill_is_bit_exact(tmp_path):
    n, total = 4, 8
    cache = tmp_path / "jax_cache"
    straight = _driver(tmp_path / "straight", tmp_path / "straight.jsonl", total, cache)
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out
    reference = _losses(tmp_path / "straight.jsonl")
    assert sorted(reference) == list(range(1, total + 1))

    # Run again, slowly, and SIGKILL it during step n + 2 (after the step-n checkpoint is on disk).
    workdir, metrics = tmp_path / "killed", tmp_path / "killed.jsonl"
    victim = _driver(workdir, metrics, total, cache, extra=("--sleep-per-step", "1.0"))
    deadline = time.time() + 600
    while time.time() < deadline:
        done = metrics.exists() and max(_losses(metrics), default=0) >= n + 1
        if done and (workdir / str(n)).is_dir():
            break
        assert victim.poll() is None, victim.communicate()[0]
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert max(_losses(metrics)) < total

    resumed = _driver(workdir, metrics, total, cache)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert json.loads(out.strip().splitlines()[-1])["resumed_from"] == n
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    after_resume = {row["step"]: row["loss"] for row in rows[-(total - n):]}
    assert after_resume == {s: reference[s] for s in range(n + 1, total + 1)}  # bit-for-bit
    final_straight = ck.load_params(tmp_path / "straight", step=total)
    final_resumed = ck.load_params(workdir, step=total)
    for a, b in zip(jax.tree.leaves(final_straight), jax.tree.leaves(final_resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
