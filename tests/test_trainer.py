"""`cxrtrek train` end to end on phantom data with the tiny preset."""

import json
import re

import numpy as np

import pytest

from cxrtrek_jax.cli import main
from cxrtrek_jax.train.run import train_experiment
from experiments import experiment_names, get_experiment

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # the runs compile the same train steps again

STEPS = 24
ALIGN_STEPS = 4


def _tiny_experiment(tmp_path, **overrides):
    cfg = get_experiment("aligned", "tiny").override({
        "data.path": str(tmp_path / "phantom"),
        "data.phantom_studies": 24,
        "data.phantom_size": 128,
        "data.length_buckets": "256,512",
        "data.global_batch_size": 4,
        "tokenizer.vocab_size": 600,
        "optim.learning_rate": 3e-3,
        "optim.warmup_steps": 3,
        "optim.total_steps": 200,
        "train.num_steps": STEPS,
        "train.log_every": 1,
        "train.eval_batches": 1,
        "checkpoint.save_every": 12,
        "mesh.tensor": 2,  # with 8 test devices: fsdp=4 x tensor=2
        "alignment.num_steps": ALIGN_STEPS,
        "alignment.global_batch_size": 4,
        "alignment.length_buckets": "128,256",
        "alignment.optim.learning_rate": 1e-3,
        **overrides,
    })
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cxrtrek_jax.train import loop as train_loop

    tmp = tmp_path_factory.mktemp("train")
    cfg = _tiny_experiment(tmp)
    calls, run_training = [], train_loop.run_training

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return run_training(*args, **kwargs)

    train_loop.run_training = spy
    try:
        result = train_experiment(cfg, tmp / "run", progress=False)
    finally:
        train_loop.run_training = run_training
    return cfg, tmp, result, calls


def _records(workdir, split):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_tiny_model_loss_falls_on_phantom_data(trained):
    _, tmp, result, _ = trained
    assert result.final_step == STEPS and result.stop_reason == "completed"
    train = _records(tmp / "run", "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    first = sum(r["loss"] for r in train[:3]) / 3
    last = sum(r["loss"] for r in train[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    validation = _records(tmp / "run", "validation")
    assert [r["step"] for r in validation] == [12, 24]
    assert validation[1]["val_loss"] < validation[0]["val_loss"]
    # The image-reliance probe ran on the same batches (a number, not what the tiny model learned).
    assert all(np.isfinite(r["val_image_gain"]) for r in validation)


def test_run_writes_resolved_config_metrics_and_checkpoints(trained):
    cfg, tmp, _, _ = trained
    run = tmp / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["text"]["vocab_size"] <= 600  # from the trained tokenizer
    assert saved["checkpoint"]["directory"] == str(run / "checkpoints")
    assert (run / "tokenizer" / "tokenizer.json").exists()
    assert list((run / "tensorboard").iterdir())
    record = _records(run, "train")[-1]
    for key in ("loss", "learning_rate", "tokens_per_s", "step_time_s", "stage2/loss", "stage2/accuracy"):
        assert key in record
    assert record["tokens_per_s"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "24"]
    # the training data's question script, named (relative to them) by the checkpoints' metadata
    from cxrtrek_jax.train.checkpointing import read_metadata
    from data_pipeline.files.sources import TfdsStudySource
    from data_pipeline.text.question_wording import read_question_script

    named = read_metadata(run / "checkpoints")["question_script_path"]
    assert (run / "checkpoints" / named).resolve() == (run / "question_script.json").resolve()
    script = read_question_script(run / "question_script.json")
    assert script.source.data == cfg.data.path and script.source.split == cfg.data.train_split
    assert script.source.studies == len(TfdsStudySource(tmp / "phantom" / "tfds", cfg.data.train_split))
    assert script.turns[0].introduces == "current" and script.turns[-1].stage == 8
    # the phantom set and its TFDS build are reused, not regenerated
    assert (tmp / "phantom" / ".complete").exists() and (tmp / "phantom" / "tfds" / ".complete").exists()


def test_the_alignment_phase_trains_single_stage_1_2_pairs_first_and_starts_the_main_phase(trained):
    _, tmp, _, calls = trained
    align = tmp / "run" / "alignment"
    records = _records(align, "train")
    assert [r["step"] for r in records] == list(range(1, ALIGN_STEPS + 1))
    # Only stage-1/2 answers carry loss there, both of them (a per-stage key is logged only for a
    # stage with answer tokens in the step); the main phase trains all stages.
    stages_logged = {int(m[1]) for r in records for m in map(re.compile(r"stage(\d+)/").match, r) if m}
    assert stages_logged == {1, 2}, f"alignment logged stages {sorted(stages_logged)}, expected 1 and 2"
    for stage in (1, 2):
        tokens = [r[f"stage{stage}/tokens"] for r in records if f"stage{stage}/tokens" in r]
        assert tokens and all(t > 0 for t in tokens), (stage, tokens)
    assert any(f"stage{s}/tokens" in r for r in _records(tmp / "run", "train") for s in range(3, 9))
    assert _records(align, "validation")[-1]["step"] == ALIGN_STEPS
    assert sorted(p.name for p in (align / "checkpoints").iterdir() if p.name.isdigit()) == [str(ALIGN_STEPS)]
    # The alignment phase's batch and length; the main phase starts from its parameters.
    assert [c["num_steps"] for c in calls] == [ALIGN_STEPS, STEPS]
    assert calls[0]["init_params_from"] is None
    assert calls[1]["init_params_from"] == str(align / "checkpoints")


@pytest.mark.slow  # trains 4 more steps (~55 s); test_fault_injection's SIGKILL case checks resume in make test
def test_a_resumed_run_ends_as_an_uninterrupted_one(trained):
    cfg, tmp, _, _ = trained
    align_log = (tmp / "run" / "alignment" / "metrics.jsonl").read_text()
    # What a run killed after logging steps 25-26 but before checkpointing them leaves behind.
    with open(tmp / "run" / "metrics.jsonl", "a") as f:
        for step in (STEPS + 1, STEPS + 2):
            f.write(json.dumps({"split": "train", "step": step, "loss": 0.0}) + "\n")
        f.write('{"split": "train", "st')  # cut short by the kill
    # Saves (27, 28) that are not log steps (26, 28): validation rows carry the saved step.
    longer = cfg.override({"train.num_steps": STEPS + 4, "checkpoint.save_every": 3,
                           "train.log_every": 2})
    result = train_experiment(longer, tmp / "run", progress=False)
    assert result.resumed_from == STEPS and result.final_step == STEPS + 4
    train = _records(tmp / "run", "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)) + [STEPS + 2, STEPS + 4]
    assert all(r["loss"] > 0 for r in train)  # the stale rows are gone, not kept beside the new
    assert [r["step"] for r in _records(tmp / "run", "validation")] == [12, 24, 27, 28]
    # The main phase had begun: the alignment phase is not repeated.
    assert (tmp / "run" / "alignment" / "metrics.jsonl").read_text() == align_log
    # An uninterrupted run of the same length (same data, logging every step) ends with the same
    # parameters, bit for bit, and logged the same loss at every step both logged.
    reference = train_experiment(longer.override({"train.log_every": 1}), tmp / "reference", progress=False)
    assert reference.resumed_from is None and reference.final_step == STEPS + 4
    _assert_same_params(tmp / "run" / "checkpoints", tmp / "reference" / "checkpoints", STEPS + 4)
    want = {r["step"]: r["loss"] for r in _records(tmp / "reference", "train")}
    assert sorted(want) == list(range(1, STEPS + 5))
    assert {r["step"]: r["loss"] for r in train} == {step: want[step] for step in (r["step"] for r in train)}


def _assert_same_params(got_dir, want_dir, step):
    """The checkpoints of `step` in the two directories hold exactly the same parameters."""
    import jax

    from cxrtrek_jax.train import checkpointing as ck

    got = jax.tree_util.tree_leaves_with_path(ck.load_params(got_dir, step=step))
    want = jax.tree_util.tree_leaves_with_path(ck.load_params(want_dir, step=step))
    assert [jax.tree_util.keystr(p) for p, _ in got] == [jax.tree_util.keystr(p) for p, _ in want]
    for (path, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_metrics_log_drops_records_after_the_start_step(tmp_path, capsys):
    from cxrtrek_jax.train.run import MetricsLog

    rows = [{"split": "train", "step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
    rows.insert(3, {"split": "validation", "step": 3, "val_loss": 1.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"spl')
    log = MetricsLog(tmp_path, 10, progress=False)
    log.start(3)
    log.write("train", 4, {"loss": 40.0})
    log.close()
    got = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"], r.get("loss")) for r in got] == [
        ("train", 1, 1.0), ("train", 2, 2.0), ("train", 3, 3.0), ("validation", 3, None),
        ("train", 4, 40.0)]
    assert "dropped 1 records of steps after 3" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="before start"):
        MetricsLog(tmp_path, 10, progress=False).write("train", 5, {"loss": 1.0})


def test_every_named_experiment_resolves_and_round_trips():
    from cxrtrek_jax.train.config import ExperimentConfig

    for name in experiment_names():
        cfg = get_experiment(name, "tiny")
        assert cfg.name == name and cfg.description
        assert ExperimentConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert get_experiment("no_context").data.pipeline.sequence.context == "off"
    assert get_experiment("report_only").data.pipeline.sequence.stages == (8,)
    assert get_experiment("lora_r8").model.lora.rank == 8


def test_cli_prints_config_and_refuses_bad_overrides(capsys):
    assert main(["train", "--experiment", "no_prior", "--preset", "tiny", "--print-config",
                 "--set", "optim.learning_rate=5e-4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"]["pipeline"]["sequence"]["no_prior"] is True and printed["optim"]["learning_rate"] == 5e-4
    assert main(["train", "--experiment", "nope", "--print-config"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["train", "--print-config", "--set", "optim.nope=1"]) == 2
    assert "has no field 'nope'" in capsys.readouterr().err
    assert main(["train", "--print-config", "--set", "novalue"]) == 2


def test_data_and_tokenizer_are_prepared_by_process_0_behind_a_barrier(tmp_path, monkeypatch):
    """Two processes simulated in one: process 1 never writes, waits at the barrier, then checks
    what process 0 made (the real two-process run is in test_fault_injection)."""
    import jax

    from cxrtrek_jax.train import run as trainer

    cfg = _tiny_experiment(tmp_path, **{"data.phantom_studies": 8, "data.phantom_size": 64})
    barriers = []
    monkeypatch.setattr(trainer, "_barrier", barriers.append)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    as_process = lambda i: monkeypatch.setattr(jax, "process_index", lambda: i)  # noqa: E731

    as_process(1)  # before process 0 made anything: waits, writes nothing, names what is missing
    with pytest.raises(FileNotFoundError, match=r"process 1: the phantom set .* is not complete"):
        trainer.prepare_data(cfg)
    assert barriers == ["cxrtrek_prepare_data"] and not (tmp_path / "phantom").exists()

    as_process(0)  # a failure on process 0 still reaches the barrier (the others do not hang)
    monkeypatch.setattr(trainer, "_phantom", lambda cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        trainer.prepare_data(cfg)
    assert barriers == ["cxrtrek_prepare_data"] * 2
    monkeypatch.undo()
    monkeypatch.setattr(trainer, "_barrier", barriers.append)
    monkeypatch.setattr(jax, "process_count", lambda: 2)

    as_process(0)
    data = trainer.prepare_data(cfg)
    tokenizer, tokenizer_dir = trainer.prepare_tokenizer(cfg, data)
    assert barriers[2:] == ["cxrtrek_prepare_data", "cxrtrek_prepare_tokenizer"]
    as_process(1)  # after process 0: finds and checks its markers, loads its tokenizer
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "phantom").rglob("*") if p.is_file()}
    assert trainer.prepare_data(cfg) == data
    loaded, loaded_dir = trainer.prepare_tokenizer(cfg, data)
    assert loaded_dir == tokenizer_dir and loaded.vocab_size == tokenizer.vocab_size
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes  # process 1 rewrote nothing
    with pytest.raises(ValueError, match=r"process 1: the phantom set .* was made for"):
        trainer.prepare_data(cfg.override({"data.phantom_seed": 7}))
