"""Mesh construction, logical-axis rules with divisibility fallback, and batch placement."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cxrtrek_jax.train import optimizer as optimizer_lib
from cxrtrek_jax.train import sharding as sh


def test_mesh_config_resolves_minus_one_and_rejects_bad_sizes():
    assert sh.MeshConfig(data=2, fsdp=-1, tensor=2).axis_sizes(8) == (2, 2, 2)
    assert sh.MeshConfig(data=-1, fsdp=1, tensor=1).axis_sizes(8) == (8, 1, 1)
    with pytest.raises(ValueError, match="at most one"):
        sh.MeshConfig(data=-1, fsdp=-1).axis_sizes(8)
    with pytest.raises(ValueError, match="do not divide"):
        sh.MeshConfig(data=3, fsdp=-1).axis_sizes(8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        sh.MeshConfig(data=2, fsdp=2, tensor=1).axis_sizes(8)
    with pytest.raises(ValueError, match="'tensor'"):
        sh.MeshConfig(tensor=0).axis_sizes(8)


def test_make_mesh_on_all_and_on_one_device():
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    assert mesh.axis_names == sh.MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    one = sh.make_mesh(sh.MeshConfig(), jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_partition_spec_maps_names_and_drops_size_one_axes():
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    assert sh.partition_spec(("embed", "mlp"), (8, 16), mesh) == P("fsdp", "tensor")
    assert sh.partition_spec(("vocab", "embed"), (32, 8), mesh) == P("tensor", "fsdp")
    assert sh.partition_spec(("batch", "length"), (4, 7), mesh) == P(("data", "fsdp"))
    assert sh.partition_spec(None, (3, 3), mesh) == P()
    data_only = sh.make_mesh(sh.MeshConfig(data=8, fsdp=1, tensor=1))
    assert sh.partition_spec(("embed", "mlp"), (8, 16), data_only) == P()
    assert sh.partition_spec(("batch", "length"), (8, 3), data_only) == P("data")


def test_partition_spec_falls_back_to_replication_when_not_divisible(caplog):
    mesh = sh.make_mesh(sh.MeshConfig(data=1, fsdp=4, tensor=2))
    with caplog.at_level(logging.WARNING, logger=sh.__name__):
        spec = sh.partition_spec(("embed", "heads"), (6, 3), mesh)
    assert spec == P()
    assert "not divisible by mesh axis 'fsdp'" in caplog.text
    assert "'heads' (size 3)" in caplog.text
    # A batch of 2 on data=2 x fsdp=4 keeps what divides: the leading mesh axis.
    mesh2 = sh.make_mesh(sh.MeshConfig(data=2, fsdp=4, tensor=1))
    assert sh.partition_spec(("batch", "length"), (2, 5), mesh2) == P("data")


def test_partition_spec_uses_each_mesh_axis_once_and_warns_on_unknown_names(caplog):
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    # batch takes data+fsdp, so embed (fsdp) stays unsharded.
    assert sh.partition_spec(("batch", "length", "embed"), (4, 3, 8), mesh) == P(("data", "fsdp"))
    with caplog.at_level(logging.WARNING, logger=sh.__name__):
        assert sh.partition_spec(("mystery_axis",), (8,), mesh) == P()
    assert "'mystery_axis' has no sharding rule" in caplog.text
    with pytest.raises(ValueError, match="do not match shape"):
        sh.partition_spec(("embed",), (8, 8), mesh)


def _toy_params():
    params = {
        "proj": {"kernel": jnp.ones((8, 4)), "bias": jnp.ones((4,))},
        "norm": {"scale": jnp.ones((8,))},
        "frozen": {"kernel": jnp.ones((8, 8))},
    }
    names = {
        "proj": {"kernel": ("embed", "mlp"), "bias": ("mlp",)},
        "norm": {"scale": ("embed",)},
        "frozen": {"kernel": ("embed", "heads")},
    }
    return params, names


def test_tree_and_opt_state_shardings_follow_parameters():
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    params, names = _toy_params()
    param_sh = sh.tree_shardings(params, names, mesh)
    assert param_sh["proj"]["kernel"].spec == P("fsdp", "tensor")
    assert param_sh["norm"]["scale"].spec == P("fsdp")
    trainable = {"proj": {"kernel": True, "bias": True}, "norm": {"scale": True},
                 "frozen": {"kernel": False}}
    tx = optimizer_lib.make_optimizer(optimizer_lib.OptimConfig(), trainable)
    abstract = jax.eval_shape(tx.init, params)
    opt_sh = sh.opt_state_shardings(abstract, params, param_sh, mesh)
    # chain(zero frozen, clip, multi_transform by tower); these toy parameters are outside the
    # model's towers, so they follow the "shared" branch, an AdamW whose first state is Adam's.
    adam = opt_sh[2].inner_states["shared"].inner_state[0]
    assert adam.mu["proj"]["kernel"].spec == P("fsdp", "tensor")
    assert adam.nu["proj"]["bias"].spec == P("tensor")
    assert adam.count.spec == P()
    # Materialise the optimizer state directly in that layout.
    state = jax.jit(tx.init, out_shardings=opt_sh)(jax.device_put(params, param_sh))
    mu = state[2].inner_states["shared"].inner_state[0].mu["proj"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor")


def test_put_batch_shards_rows_and_checks_divisibility():
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    batch = {"tokens": np.arange(8 * 3, dtype=np.int32).reshape(8, 3),
             "images": np.zeros((8, 2, 4, 4), np.float32)}
    placed = sh.put_batch(batch, mesh)
    assert placed["tokens"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(placed["tokens"]), batch["tokens"])
    assert placed["tokens"].addressable_shards[0].data.shape == (2, 3)
    with pytest.raises(ValueError, match="'tokens'.*not divisible by data x fsdp = 4"):
        sh.put_batch({"tokens": np.zeros((6, 3), np.int32)}, mesh)


def test_initialize_distributed_only_when_configured():
    calls = []

    def fake_initialize(**kwargs):
        calls.append(kwargs)

    assert not sh.initialize_distributed(sh.DistributedConfig(), environ={}, initialize=fake_initialize)
    config = sh.DistributedConfig(coordinator="localhost:1234", num_processes=2, process_id=1)
    assert sh.initialize_distributed(config, environ={}, initialize=fake_initialize)
    assert calls[-1] == {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}
    tpu_env = {"TPU_WORKER_HOSTNAMES": "host-a,host-b"}
    assert sh.initialize_distributed(sh.DistributedConfig(), environ=tpu_env, initialize=fake_initialize)
    assert calls[-1] == {}
    with pytest.raises(ValueError, match="--num-processes, --process-id"):
        sh.initialize_distributed(sh.DistributedConfig(coordinator="h:1"), environ={},
                                  initialize=fake_initialize)
    with pytest.raises(ValueError, match="outside 0..1"):
        sh.initialize_distributed(sh.DistributedConfig("h:1", 2, 2), environ={},
                                  initialize=fake_initialize)


# --- The sharded train step gives the same numbers on 1 device and on 8 -----------------------

def _equivalence_setup():
    from cxrtrek_jax.testing import synthetic_batches as sb
    from cxrtrek_jax.model import CXRTrekNet, get_config

    config = get_config("tiny")
    spec = sb.SyntheticSpec(
        batch_size=8, seq_len=48, vocab_size=config.vocab_size,
        image_token_id=config.image_token_id, tokens_per_image=config.tokens_per_image,
        max_images=config.max_images, image_size=config.vision.image_size,
    )
    return (lambda rngs: CXRTrekNet(config, rngs=rngs)), spec


def _three_steps(mesh):
    from cxrtrek_jax.testing import synthetic_batches as sb
    from cxrtrek_jax.train import step as ts

    model_fn, spec = _equivalence_setup()
    optim = optimizer_lib.OptimConfig(learning_rate=3e-3, warmup_steps=1, total_steps=50,
                                      weight_decay=0.01)
    split = ts.split_abstract_model(model_fn)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: 0.05 * rng.standard_normal(x.shape).astype(np.float32),
                          split.abstract_params)
    tx = optimizer_lib.make_optimizer(optim)
    shardings = ts.state_shardings(split, tx, mesh)
    state = ts.create_train_state(params, tx, shardings)
    step_fn = ts.make_train_step(split, tx, optim, shardings)
    losses = []
    for i in range(3):
        state, metrics = step_fn(state, sh.put_batch(sb.synthetic_batch(spec, i), mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def one_device_steps():
    return _three_steps(sh.make_mesh(sh.MeshConfig(), jax.devices()[:1]))


@pytest.mark.parametrize("mesh_config", [sh.MeshConfig(data=2, fsdp=2, tensor=2),
                                         sh.MeshConfig(data=8, fsdp=1, tensor=1)],
                         ids=["data2-fsdp2-tensor2", "data8"])
def test_train_step_matches_one_device_on_eight(one_device_steps, mesh_config):
    ref_losses, ref_params, _ = one_device_steps
    losses, params, state = _three_steps(sh.make_mesh(mesh_config))
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
    up_proj = state.params["text"]["layers"][0]["mlp"]["up_proj"]["kernel"]  # (embed, mlp)
    expected = P("fsdp", "tensor") if mesh_config.tensor == 2 else P()
    assert up_proj.sharding.spec == expected
    assert len(up_proj.sharding.device_set) == 8


# --- Two processes x 4 devices equal one process x 8 devices (slow: three processes) ----------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _driver(tmp_path, name, devices_per_process, extra=()):
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    command = [sys.executable, "-m", "cxrtrek_jax.testing.synthetic_training", "--workdir", str(tmp_path / name),
               "--steps", "3", "--save-every", "100", "--mesh", "2,2,2",
               "--metrics-file", str(tmp_path / f"{name}.jsonl"), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    import json

    single = _driver(tmp_path, "single", 8)
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out
    coordinator = f"localhost:{_free_port()}"
    workers = [
        _driver(tmp_path, "multi", 4, extra=("--coordinator", coordinator, "--num-processes", "2",
                                              "--process-id", str(i)))
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output

    def losses(name):
        rows = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        return [json.loads(row)["loss"] for row in rows]

    assert len(losses("multi")) == 3
    np.testing.assert_allclose(losses("multi"), losses("single"), atol=1e-5, rtol=0)
    # Each process saved its own data-iterator state.
    assert len(list((tmp_path / "multi" / "3" / "data_iterator").glob("process_*-of-2.json"))) == 2
