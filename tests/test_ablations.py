"""The ablation runner and report on phantom data with the tiny preset, and LoRA init-from."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import ablations
from cxrtrek_jax.train import checkpointing as ck
from data_pipeline.schema.records import QAItem, Study
from experiments import ABLATIONS

SMOKE_STEPS = 4
# Every run of the single-run runner (make experiment-NAME) is slow-marked: these four end to end
# (lora_r8 needs baseline), the others parametrized; make test covers the study's runner
# (tests/test_ablation_study.py) and this module's unit tests.
FAST = ("baseline", "lora_r8", "frozen_vision", "no_context")


def _smoke_sets(root):
    """Tiny-preset CPU-smoke overrides: shared phantom dir, few steps, one eval study."""
    return [
        f"data.path={root / 'phantom'}",
        "data.phantom_studies=20",
        "data.phantom_size=64",
        "data.phantom_splits=train=16,validation=2,test=2",
        "data.length_buckets=256,512",
        "data.global_batch_size=4",
        "tokenizer.vocab_size=600",
        "optim.warmup_steps=1",
        f"optim.total_steps={SMOKE_STEPS + 1}",
        f"train.num_steps={SMOKE_STEPS}",
        "train.log_every=2",
        "train.eval_batches=1",
        f"checkpoint.save_every={SMOKE_STEPS}",
        "mesh.tensor=2",  # with 8 test devices: fsdp=4 x tensor=2
        "eval.max_studies=1",
        "eval.max_new_tokens=8",
    ]


def _run(root, name, *extra):
    sets = _smoke_sets(root)
    if name == "lora_r8":
        sets.append(f"train.init_from={root / 'runs' / 'baseline' / 'checkpoints'}")
    if name in ("aligned", "grounded"):  # a smoke-length alignment phase too
        sets.append(f"alignment.num_steps={SMOKE_STEPS}")
    argv = ["run", name, "--preset", "tiny", "--runs-dir", str(root / "runs"), "--bootstrap-resamples", "20",
            "--no-progress", *[a for s in sets for a in ("--set", s)], *extra]
    return ablations.main(argv)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ablations")


@pytest.fixture(scope="module")
def baseline(root):
    assert _run(root, "baseline") == 0
    return root / "runs" / "baseline"


@pytest.fixture(scope="module")
def lora_run(root, baseline):
    assert _run(root, "lora_r8") == 0
    return root / "runs" / "lora_r8"


def _check_run(run_dir, contexts):
    record = json.loads((run_dir / ablations.FINISHED_FILE).read_text())
    assert record["final_step"] == SMOKE_STEPS and record["preset"] == "tiny"
    assert (run_dir / "config.json").exists()
    for name in ("predictions.jsonl", "metrics.json", "metrics.md", "stages.png"):
        assert (run_dir / "eval" / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert list(metrics["contexts"]) == list(contexts)
    assert record["eval"]["studies"] == 1
    return record, metrics


@pytest.mark.slow  # the single-run runner end to end (~1 min each); make test covers the study's runner
def test_baseline_trains_evaluates_and_is_not_rerun(root, baseline, capsys):
    _check_run(baseline, ("own", "teacher", "none"))
    stamp = (baseline / ablations.FINISHED_FILE).stat().st_mtime_ns
    assert _run(root, "baseline") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (baseline / ablations.FINISHED_FILE).stat().st_mtime_ns == stamp
    # Same name, another config: refused without --force, and the finished run is kept.
    assert _run(root, "baseline", "--set", "train.log_every=1") == 2
    assert "train.log_every" in capsys.readouterr().err
    assert (baseline / ablations.FINISHED_FILE).stat().st_mtime_ns == stamp


@pytest.mark.slow  # the single-run runner end to end (~1 min each); make test covers the study's runner
def test_lora_r8_starts_from_the_baseline_checkpoint(lora_run, baseline):
    _check_run(lora_run, ("own", "teacher", "none"))
    params = ck.load_params(lora_run / "checkpoints")
    base = ck.load_params(baseline / "checkpoints")
    q_proj = params["text"]["layers"][0]["attn"]["q_proj"]
    # The frozen base weights are the baseline's; the adapters exist and were trained.
    np.testing.assert_array_equal(q_proj["kernel"], base["text"]["layers"][0]["attn"]["q_proj"]["kernel"])
    assert float(np.abs(np.asarray(q_proj["lora"]["b"])).max()) > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ABLATIONS if n not in FAST])
def test_every_other_ablation_runs(root, baseline, name):
    assert _run(root, name) == 0
    record, metrics = _check_run(root / "runs" / name, {
        "no_context": ("none",), "own_vs_teacher": ("own", "teacher")}.get(name, ("own", "teacher", "none")))
    if name == "report_only":
        assert record["eval"]["turn_filter"]["turns"] == "stages [8] only"
        for section in metrics["contexts"].values():
            assert list(section["by_stage"]) == ["8"]


@pytest.mark.slow  # the single-run runner end to end (~1 min each); make test covers the study's runner
def test_report_lists_finished_runs_and_missing_ones(root, baseline, lora_run, capsys):
    assert ablations.main(["report", "--runs-dir", str(root / "runs")]) == 0
    markdown = (root / "runs" / "ablations.md").read_text()
    assert (root / "runs" / "ablations.png").stat().st_size > 0
    runs = {r.name: r for r in ablations.collect_runs(root / "runs")}
    assert set(runs) == set(ABLATIONS)
    for name, run in runs.items():
        if run.status == "finished":
            assert f"| {name} | own |" in markdown or f"| {name} | none |" in markdown
        else:
            assert f"- {name}: not run" in markdown
    assert runs["baseline"].status == runs["lora_r8"].status == "finished"
    assert "S1 accuracy" in markdown
    # The blind majority baseline, scored on each run's evaluated turns, sits beside the runs.
    assert "| baseline | majority baseline |" in markdown
    assert runs["baseline"].metrics["baselines"]["majority"]["overall"]["n_items"] > 0


def _leaves(tree):
    return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


@pytest.mark.slow  # the single-run runner end to end (~1 min each); make test covers the study's runner
def test_frozen_vision_keeps_the_vision_tower_at_its_initialisation(root, baseline):
    """The frozen tower's parameters after training equal a fresh model's of the same seed,
    while the decoder's moved."""
    from flax import nnx

    from cxrtrek_jax.model import CXRTrekNet, from_dict

    assert _run(root, "frozen_vision") == 0
    run_dir = root / "runs" / "frozen_vision"
    _check_run(run_dir, ("own", "teacher", "none"))
    trained = ck.load_params(run_dir / "checkpoints")
    metadata = ck.read_metadata(run_dir / "checkpoints")
    seed = json.loads((run_dir / "config.json").read_text())["train"]["seed"]
    model = CXRTrekNet(from_dict(metadata["model_config"]), rngs=nnx.Rngs(seed))
    init = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    vision_trained, vision_init = _leaves(trained["vision"]), _leaves(init["vision"])
    assert vision_trained.keys() == vision_init.keys() and len(vision_init) > 4

    def change(a, b):  # largest change relative to the tensor's scale
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))

    # Unchanged up to the float rounding of a jitted vs an eager initialisation (~1 ulp)...
    assert max(change(vision_trained[p], v) for p, v in vision_init.items()) < 1e-6
    # ...while the decoder moved by far more, and the baseline (same seed) moved its vision tower.
    text_trained, text_init = _leaves(trained["text"]), _leaves(init["text"])
    moved = [p for p, v in text_init.items() if change(text_trained[p], v) > 1e-4]
    assert len(moved) > len(text_init) // 2
    base_vision = _leaves(ck.load_params(baseline / "checkpoints")["vision"])
    assert max(change(base_vision[p], v) for p, v in vision_init.items()) > 1e-4


def _answer_spans(row_mask: np.ndarray) -> int:
    """How many separate runs of loss positions (answers) a row's loss mask has."""
    on = (np.asarray(row_mask) > 0).astype(np.int8)
    return int(((on[1:] == 1) & (on[:-1] == 0)).sum() + on[0])


@pytest.mark.slow  # the single-run runner end to end (~1 min each); make test covers the study's runner
def test_no_context_trains_rows_of_one_qa_pair(root, monkeypatch):
    """Every training row of `no_context` holds one question and its answer (one loss span),
    where the baseline's rows hold staged chains; and it is evaluated in mode none."""
    from cxrtrek_jax.train import run as trainer
    from data_pipeline.batches.grain_pipeline import build_train_iterator
    from data_pipeline.text.tokenizer import load_tokenizer

    used, pipeline_config = [], trainer.pipeline_config

    def recording(*args, training, **kwargs):
        config = pipeline_config(*args, training=training, **kwargs)
        if training:
            used.append(config)
        return config

    monkeypatch.setattr(trainer, "pipeline_config", recording)
    assert _run(root, "no_context") == 0
    run_dir = root / "runs" / "no_context"
    _check_run(run_dir, ("none",))
    (config,) = used
    tokenizer = load_tokenizer(run_dir / "tokenizer")

    def spans(cfg, batches=3):
        iterator = build_train_iterator(cfg, tokenizer)
        found = []
        for _ in range(batches):
            batch = next(iterator)
            found += [_answer_spans(m) for m, s in zip(batch["loss_mask"], batch["segment_ids"]) if s.max() > 0]
        return found

    assert set(spans(config)) == {1}
    staged = dataclasses.replace(config, sequence=dataclasses.replace(config.sequence, context="on"))
    assert max(spans(staged)) > 1  # the same studies with stage context: several answers per row


def test_report_with_no_runs_lists_all_missing(tmp_path):
    md, png, runs = ablations.write_report(tmp_path / "runs")
    assert png.exists() and [r.status for r in runs] == ["not run"] * len(ABLATIONS)
    assert all(f"- {name}: not run" in md.read_text() for name in ABLATIONS)


def test_unknown_experiment_and_bad_override_are_clear_errors(tmp_path, capsys):
    assert ablations.main(["run", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert ablations.main(["run", "baseline", "--set", "train.num_steps", "--runs-dir", str(tmp_path)]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_filter_turns_keeps_the_trained_stages_and_current_images():
    def item(stage, count):
        return QAItem(stage, "t", "open", count, f"q{stage}", f"a{stage}")

    study = Study("s1", ref_study_id="p1", images=("cur.png", "prior.png"),
                  items=(item(1, 1), item(5, 2), item(8, 1)))
    assert [i.stage for i in ablations.filter_turns(study, (8,), False).items] == [8]
    no_prior = ablations.filter_turns(study, None, True)
    assert [i.stage for i in no_prior.items] == [1, 8] and no_prior.messages is None


def _save(directory, params):
    ck.save_params_only(directory, params, model_config={})


def test_load_params_into_keeps_fresh_lora_and_names_missing_base_params(tmp_path):
    stored = {"dense": {"kernel": np.full((2, 3), 7.0, np.float32)}}
    _save(tmp_path / "base", stored)
    fresh = {"dense": {"kernel": jax.numpy.zeros((2, 3)),
                       "lora": {"a": jax.numpy.ones((2, 1)), "b": jax.numpy.zeros((1, 3))}}}
    is_lora = {"dense": {"kernel": False, "lora": {"a": True, "b": True}}}
    loaded = ck.load_params_into(tmp_path / "base", fresh, is_lora)
    np.testing.assert_array_equal(loaded["dense"]["kernel"], 7.0)
    np.testing.assert_array_equal(loaded["dense"]["lora"]["a"], 1.0)
    fresh["norm"] = {"scale": jax.numpy.ones((3,))}
    is_lora["norm"] = {"scale": False}
    with pytest.raises(ValueError, match="norm/scale is missing from the checkpoint"):
        ck.load_params_into(tmp_path / "base", fresh, is_lora)
    with pytest.raises(ValueError, match="dense/kernel has shape"):
        ck.load_params_into(tmp_path / "base", {"dense": {"kernel": jax.numpy.zeros((3, 3))}},
                            {"dense": {"kernel": False}})


def test_a_field_added_later_at_its_default_is_not_a_config_change():
    requested = ablations._as_json(ablations.resolve_experiment("baseline", "tiny", {}).to_dict())
    stored = json.loads(json.dumps(requested))
    del stored["optim"]["vision"]  # written before the field existed
    assert ablations._differences(ablations._with_defaults(stored), requested) == []
    stored["optim"]["learning_rate"] = 0.5
    assert ablations._differences(ablations._with_defaults(stored), requested) == ["optim.learning_rate"]
    stored["optim"]["no_such_field"] = 1  # not parseable any more: compared as stored
    assert "optim.no_such_field" in ablations._differences(ablations._with_defaults(stored), requested)
