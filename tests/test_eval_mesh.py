"""`cxrtrek eval` on a device mesh and across processes gives the predictions of one device.

A tiny randomly initialised checkpoint (saved with its logical axis names, as training and
import-hf save them) answers phantom studies: once on one device, once with `--set mesh.fsdp=4
--set mesh.tensor=2` on the 8 simulated CPU devices (parameters sharded over fsdp and tensor, each
batch's studies over the 4 fsdp groups), and (slow) as 2 processes x 4 devices joined with
--coordinator. Greedy answers must be the same text, stop reasons and token counts in the same
order; at the library level the token ids of a continuously batched stream are compared too.
"""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from cxrtrek_jax.cli import main
from cxrtrek_jax.decoding import DecodeSpec, StepwiseDecoder, fixed_plan, stream_chain, study_turns
from cxrtrek_jax.decoding.chain import ChainStudy
from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
from cxrtrek_jax.evaluation.runs.model_eval import EvalData, iter_eval_studies
from cxrtrek_jax.model import CXRTrekNet, get_config, override, to_dict
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train.checkpointing import save_params_only
from cxrtrek_jax.train.step import param_logical_names
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
from data_pipeline.text.box_grammar import box_grammar_of
from data_pipeline.text.sequences import system_prompt_of
from data_pipeline.text.tokenizer import load_tokenizer, train_tokenizer, training_texts

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")

MESH = ["--set", "mesh.fsdp=4", "--set", "mesh.tensor=2"]
EVAL = ["--split", "all", "--baseline-split", "none", "--context", "own,none", "--batch-size", "4",
        "--max-new-tokens", "8", "--no-meteor", "--bootstrap-resamples", "5", "--no-progress"]
STUDIES = 5  # more than one batch of 4: the row freed by the shortest chain takes the fifth study


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_mesh")
    data = write_phantom_dataset(root / "phantom", STUDIES, seed=3, config=PhantomConfig(size=64, turns_per_study=(3, 5)),
                                 split="test")
    tokenizer = train_tokenizer(training_texts(read_studies(data)), 500)
    tokenizer.save(root / "tokenizer")
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 4})
    model = CXRTrekNet(config, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    save_params_only(str(root / "ckpt"), nnx.to_pure_dict(state), model_config=to_dict(config),
                     logical_names=param_logical_names(state), tokenizer_path=str(root / "tokenizer"))
    return dict(root=root, data=str(data), ckpt=str(root / "ckpt"), config=config)


def _decoded(path) -> list[dict]:
    """The predictions file's records without their wall times (the only field runs may differ in)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        assert row.pop("latency_s") > 0
    return rows


@pytest.fixture(scope="module")
def one_device(world):
    out = world["root"] / "one_device"
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", world["data"], "--out", str(out), *EVAL]) == 0
    rows = _decoded(out / "predictions.jsonl")
    assert {r["context"] for r in rows} == {"own", "none"}
    assert len({r["study_id"] for r in rows}) == STUDIES
    return rows


def test_eval_on_an_eight_device_mesh_gives_the_one_device_predictions(world, one_device, capsys):
    out = world["root"] / "mesh"
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", world["data"], "--out", str(out),
                 *EVAL, *MESH]) == 0
    printed = capsys.readouterr().out
    assert _decoded(out / "predictions.jsonl") == one_device
    # The parameters really were sharded: a device holds about an eighth of them (every weight
    # matrix splits over fsdp x tensor; a few small vectors only over fsdp or not at all).
    found = re.search(r"decoding on a mesh of data 1 x fsdp 4 x tensor 2 \(8 devices, 1 process\(es\)\): "
                      r"parameters ([0-9.]+) MiB per device of ([0-9.]+) MiB", printed)
    assert found, printed
    held, total = map(float, found.groups())
    assert total / 8 <= held < total / 6
    identity = json.loads((out / "metrics.json").read_text())["identity"]
    assert identity["decode_mesh"] == {"data": 1, "fsdp": 4, "tensor": 2, "devices": 8, "processes": 1}


def test_sharded_stream_gives_the_token_ids_of_one_device(world):
    """Library level: parameters and state really are sharded, and a stream of 6 studies through 4
    rows (admissions included) gives the token ids of one device, turn by turn."""
    tokenizer = load_tokenizer(world["root"] / "tokenizer")
    config = world["config"]
    studies = [ChainStudy(study.key, images, system_prompt_of(study),
                          lambda study=study: fixed_plan(study_turns(study, "given")))
               for study, images in iter_eval_studies(EvalData(world["data"], split=None), config.vision.image_size)]
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=config.text.max_positions, max_answer_tokens=8)

    def run(mesh):
        loaded = load_checkpoint_model(world["ckpt"], mesh=mesh)
        decoder = StepwiseDecoder(loaded.graphdef, config, spec, mesh=mesh,  # as eval's (compiled once)
                                  grammar=box_grammar_of(tokenizer, config.vocab_size))
        results = dict(stream_chain(decoder, loaded.state, tokenizer, studies, batch_size=4, context="own",
                                    max_new_tokens=8))
        return loaded, [[(t.turn_index, t.answer_tokens, t.stop_reason) for t in results[i]]
                        for i in range(len(studies))]

    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(data=1, fsdp=4, tensor=2))
    loaded, sharded = run(mesh)
    _, reference = run(None)
    assert sharded == reference
    assert sum(len(turns) for turns in reference) > 20 and any(len(t[1]) > 2 for turns in reference for t in turns)
    up_proj = loaded.state["text"]["layers"][0]["mlp"]["up_proj"]["kernel"]  # (embed, mlp)
    assert up_proj.sharding.spec == PartitionSpec("fsdp", "tensor") and len(up_proj.sharding.device_set) == 8


def test_mesh_flags_are_checked_before_decoding(world, capsys):
    base = ["eval", "--checkpoint", world["ckpt"], "--data", world["data"], "--out", str(world["root"] / "bad"),
            *EVAL]
    assert main([*base, "--set", "optim.learning_rate=1"]) == 2
    assert "eval and infer take mesh.KEY=VALUE" in capsys.readouterr().err
    assert main([*base, "--set", "mesh.fsdp=3"]) == 2
    assert "needs 3 devices, but 8 are available" in capsys.readouterr().err
    assert main([*base, "--set", "mesh.fsdp=8"]) == 2  # --batch-size 4 over 8 groups
    assert "batch size 4 does not split over the mesh's data x fsdp = 8 groups" in capsys.readouterr().err
    assert main(["eval", "--predictions", str(world["root"] / "x.jsonl"), "--out", str(world["root"] / "bad"),
                 *MESH]) == 2
    assert "go with --checkpoint" in capsys.readouterr().err
    assert not (world["root"] / "bad").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_one_device_predictions(world, one_device, tmp_path):
    """2 processes x 4 CPU devices, one (data 1, fsdp 4, tensor 2) mesh across them: process 0 writes
    the predictions of one device; process 1 (its own --out) writes nothing."""
    coordinator = f"localhost:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    outs = [tmp_path / f"process{i}" for i in range(2)]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "cxrtrek_jax.cli", "eval", "--checkpoint", world["ckpt"], "--data", world["data"],
         "--out", str(outs[i]), *EVAL, *MESH, "--coordinator", coordinator, "--num-processes", "2",
         "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    assert _decoded(outs[0] / "predictions.jsonl") == one_device
    identity = json.loads((outs[0] / "metrics.json").read_text())["identity"]
    assert identity["decode_mesh"] == {"data": 1, "fsdp": 4, "tensor": 2, "devices": 8, "processes": 2}
    assert not outs[1].exists()
    assert "process 1 of 2: decoded its share; process 0 writes" in outputs[1]
