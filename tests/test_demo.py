"""The demo: its learning checks (the model in the `own` context against the majority baseline),
and a tiny end-to-end run that reruns only what changed."""

import json

import pytest

from experiments.demo import LEARNING_CHECKS, learning_checks


def _section(view: float | None, yes_no: float, report_f1: float) -> dict:
    def entry(metric, value, n=10):
        return {"n_items": n, "metrics": {metric: {"value": value}}}

    return {
        "by_task_type": {"View_Information": entry("accuracy", view)},
        "by_stage_qtype": {"2/yes_no": entry("accuracy", yes_no), "1/yes_no": entry("accuracy", 1.0)},
        "by_stage": {"8": entry("ce_micro_f1", report_f1, n=4)},
    }


def _metrics(own: dict, baseline: dict) -> dict:
    return {"contexts": {"own": own, "teacher": _section(1.0, 1.0, 1.0)}, "baselines": {"majority": baseline}}


def _scored(own_right: int, swapped_right: int, studies: int = 40) -> list:
    """Prediction records of every check's group: `studies` studies with one view, one stage-2 yes/no
    and one report turn each; the first `own_right` / `swapped_right` studies are right (the report:
    its one reference label predicted) in the own / swapped context."""
    from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord

    records = []
    for context, right in (("own", own_right), ("swapped", swapped_right)):
        for s in range(studies):
            ok = s < right
            for turn, (stage, task, qtype) in enumerate([(1, "View_Information", "yes_no"),
                                                         (2, "Findings_Identification", "yes_no")]):
                records.append(PredictionRecord(f"s{s}", turn, stage, task, qtype, "q?", "Yes.", "x", context,
                                                scores={"correct": ok}))
            records.append(PredictionRecord(f"s{s}", 2, 8, "Report_Generation", "captioning", "r?", "r", "p", context,
                                            scores={"ce_reference_positive": ["Edema"],
                                                    "ce_predicted_positive": ["Edema"] if ok else ["Cardiomegaly"]}))
    return records


def test_checks_compare_own_context_with_the_baseline_and_need_the_margin():
    baseline = _section(0.65, 0.55, 0.30)
    reads = _scored(own_right=34, swapped_right=16)
    rows = learning_checks(_metrics(_section(0.85, 0.70, 0.31), baseline), reads)
    assert [r["check"] for r in rows] == [c[0] for c in LEARNING_CHECKS]
    assert [r["met"] for r in rows] == [True, True, True] and all(r["verdict"] == "met" for r in rows)
    assert rows[0]["model"] == 0.85 and rows[0]["baseline"] == 0.65 and rows[0]["items"] == 10
    assert rows[0]["own_minus_swapped"] == pytest.approx(18 / 40) and rows[0]["own_minus_swapped_ci"][0] > 0
    # Just below the 15-point margin, or merely equal at stage 8, is not learning.
    rows = learning_checks(_metrics(_section(0.79, 0.69, 0.30), baseline), reads)
    assert [r["met"] for r in rows] == [False, False, False]
    assert all(r["verdict"] == "NOT MET: below the baseline's margin" for r in rows)
    # The teacher context's perfect scores do not count.
    assert all(r["context"] == "own" for r in rows)


def test_a_margin_kept_with_another_studys_images_is_not_reading():
    """Over the baseline by the margin, but as good (or better) with swapped images, or better by
    less than resampling noise: not met, whatever the margin."""
    baseline = _section(0.65, 0.55, 0.30)
    for own_right, swapped_right in ((30, 30), (28, 31), (30, 28)):
        rows = learning_checks(_metrics(_section(0.85, 0.70, 0.31), baseline), _scored(own_right, swapped_right))
        assert [r["met"] for r in rows] == [False, False, False], (own_right, swapped_right)
        assert all(r["beats_baseline"] and not r["reads_images"] for r in rows)
        assert all(r["verdict"].endswith("no better with its own images than with another study's") for r in rows)


def test_a_missing_group_fails_its_check():
    baseline = _section(0.65, 0.55, 0.30)
    own = _section(0.90, 0.90, 0.90)
    del own["by_stage"]["8"]
    rows = learning_checks(_metrics(own, baseline), _scored(34, 16))
    assert [r["met"] for r in rows] == [True, True, False] and rows[2]["model"] is None
    rows = learning_checks(_metrics(_section(None, 0.9, 0.9), baseline), _scored(34, 16))
    assert rows[0]["met"] is False
    # Not evaluated with swapped images: nothing shows the images were read.
    rows = learning_checks(_metrics(_section(0.9, 0.9, 0.9), baseline),
                           [r for r in _scored(34, 16) if r.context == "own"])
    assert all(r["verdict"] == "NOT MET: not evaluated with swapped images" for r in rows)


def test_the_image_reliance_line_reads_a_negative_or_small_gain_as_not_reading():
    from experiments.demo import IGNORES_IMAGES_BELOW, _image_reliance_line

    assert "does not read its images" in _image_reliance_line(-0.05, "token")
    assert "not shown to read them" in _image_reliance_line(IGNORES_IMAGES_BELOW / 2, "sqrt")
    assert "the model reads its images" in _image_reliance_line(0.098, "sqrt")


def test_last_image_gain_reads_the_newest_validation_record(tmp_path):
    import json

    from experiments.demo import _last_image_gain

    path = tmp_path / "metrics.jsonl"
    records = [{"split": "train", "step": 1, "loss": 2.0}, {"split": "validation", "step": 2, "val_image_gain": 0.5},
               {"split": "validation", "step": 4, "val_image_gain": 0.125}, {"split": "train", "step": 5}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert _last_image_gain(path) == 0.125
    path.write_text(json.dumps(records[0]) + "\n")
    assert _last_image_gain(path) is None


def test_the_default_demo_trains_the_grounded_recipe_with_room_for_its_chains(tmp_path):
    from experiments import demo

    cfg = demo._experiment(demo._parser().parse_args(["--out", str(tmp_path)]), tmp_path)
    assert cfg.name == "demo" and "the grounded experiment" in cfg.description
    assert cfg.alignment.context == "on" and cfg.alignment.num_steps > 0
    # tiny holds 512 positions and 2 images; the demo's chains need 1,024 and up to 4 (priors).
    assert (cfg.model.text.max_positions, cfg.model.max_images) == (1024, 4)
    assert cfg.optim.vision.learning_rate < cfg.optim.learning_rate
    small = demo._experiment(demo._parser().parse_args(["--out", str(tmp_path), "--preset", "small"]), tmp_path)
    assert (small.model.text.max_positions, small.model.max_images) == (2048, 4)  # never narrowed
    steps = demo._experiment(demo._parser().parse_args(["--out", str(tmp_path), "--alignment-steps", "7"]), tmp_path)
    assert steps.alignment.num_steps == 7
    # A seed moves the training (initialisation, data order, augmentation), never the phantom set
    # the held-out studies and the baseline come from.
    seeded = demo._experiment(demo._parser().parse_args(["--out", str(tmp_path), "--seed", "2"]), tmp_path)
    assert (seeded.train.seed, seeded.data.pipeline.seed) == (2, 2) != (cfg.train.seed, cfg.data.pipeline.seed)
    assert seeded.data.phantom_seed == cfg.data.phantom_seed
    with pytest.raises(SystemExit, match="'baseline' has no alignment phase"):
        demo._experiment(demo._parser().parse_args(["--out", str(tmp_path), "--experiment", "baseline",
                                                    "--alignment-steps", "7"]), tmp_path)


def test_the_demo_trains_the_registrys_demo_experiment_as_cxrtrek_train_does(tmp_path, capsys):
    """`make demo` and `cxrtrek train --experiment demo` (given the demo's data path) resolve the
    same config, so they train the same model; the demo's flags at their defaults are the
    registry's settings."""
    from cxrtrek_jax.cli import main as cxrtrek
    from cxrtrek_jax.train.registry import get_experiment
    from experiments import demo

    used = demo._experiment(demo._parser().parse_args(["--out", str(tmp_path)]), tmp_path).to_dict()
    assert used == get_experiment("demo", "tiny").override({"data.path": str(tmp_path / "phantom")}).to_dict()
    assert cxrtrek(["train", "--experiment", "demo", "--preset", "tiny", "--print-config",
                    "--set", f"data.path={tmp_path / 'phantom'}"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(used))
    # The flags move the settings they name (and what follows from them), on top of the registry's.
    argv = ["--out", str(tmp_path), "--steps", "40", "--buckets", "256,512", "--turns", "4,6",
            "--set", "train.log_every=1"]
    flagged = demo._experiment(demo._parser().parse_args(argv), tmp_path)
    assert (flagged.train.num_steps, flagged.optim.warmup_steps, flagged.optim.total_steps,
            flagged.checkpoint.save_every, flagged.train.log_every) == (40, 4, 41, 20, 1)
    assert (flagged.data.pipeline.length_buckets, flagged.data.phantom_turns) == ((256, 512), (4, 6))
    assert (flagged.model.text.max_positions, flagged.model.max_images) == (512, 4)  # tiny's own 512
    with pytest.raises(SystemExit, match="recipe must be one of .*got 'demo'"):
        demo._experiment(demo._parser().parse_args(["--out", str(tmp_path), "--experiment", "demo"]), tmp_path)


@pytest.mark.slow  # four tiny demo runs, ~3-5 min on the 2-core CPU
def test_the_demo_runs_end_to_end_and_reruns_only_what_changed(tmp_path, capsys):
    """A tiny demo: every step runs through the library (no command-line strings) and its exit
    status (with --strict) says whether PyTorch reproduced the JAX answers and the learning checks
    were met (a 2-step model's near-tied logits may
    flip a greedy token; the export's parity is tested in test_hf_export); run again, nothing is
    redone; with another evaluation setting only the evaluation is redone; with another
    experiment config training starts afresh."""
    from experiments import demo

    def run(args):
        code = demo.main(args)
        rows = json.loads((tmp_path / "pytorch_check.json").read_text())
        checks = json.loads((tmp_path / "learning_check.json").read_text())
        # --strict: 1 when PyTorch differs, else 2 when a learning check is not met (a 2-step model's).
        expected = 1 if not rows[0]["identical"] else (0 if all(c["met"] for c in checks) else 2)
        assert len(rows) == 1 and code == expected
        assert all(c["verdict"] == "met" or c["verdict"].startswith("NOT MET: ") for c in checks)
        return capsys.readouterr().out

    argv = ["--out", str(tmp_path), "--preset", "tiny", "--studies", "20", "--steps", "2", "--turns", "4,6",
            "--buckets", "256,512", "--eval-studies", "3", "--check-studies", "1",
            "--set", "mesh.tensor=2", "--set", "data.phantom_size=64", "--set", "tokenizer.vocab_size=600",
            "--set", "data.phantom_splits=train=14,validation=3,test=3",
            "--alignment-steps", "2", "--set", "alignment.global_batch_size=4", "--strict"]
    first = run(argv)
    assert "answers token-identical" in first and "learning checks met" in first
    checkpoint = tmp_path / "run" / "checkpoints"
    metrics, export = tmp_path / "eval" / "metrics.json", tmp_path / "hf_export" / "config.json"
    times = {p: p.stat().st_mtime_ns for p in (metrics, export, tmp_path / "run" / "metrics.jsonl")}

    again = run(argv)
    assert "already trained with this config" in again and "already evaluated" in again
    assert "already exported from this checkpoint" in again
    assert {p: p.stat().st_mtime_ns for p in times} == times

    changed = run([*argv, "--eval-studies", "2"])
    assert "already trained with this config" in changed and "already evaluated" not in changed
    assert metrics.stat().st_mtime_ns != times[metrics] and export.stat().st_mtime_ns == times[export]

    assert "trained from another config: training afresh" in run([*argv, "--set", "train.log_every=1"])
    assert checkpoint.is_dir()
