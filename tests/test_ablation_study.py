"""The ablation study: its table against `grounded`, shared work keyed by config, the paired answers
and runs/ablations.json's schema; the whole pipeline on `tiny` (slow)."""

import json

import pytest

from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from experiments import ablation_answers as answers_lib
from experiments import ablation_study as study

SCALE = study.StudyScale(preset="tiny", studies=40, steps=3, alignment_steps=2, eval_studies=2)


def _diff(a, b, prefix=""):
    """Dotted keys where two config trees differ (a key missing on one side counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {d for k in set(a) | set(b) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")}
    return set() if a == b else {prefix.rstrip(".")}


def test_each_ablation_differs_from_grounded_in_exactly_the_fields_it_names(tmp_path):
    grounded = study.ablation_config("grounded", SCALE, 0, tmp_path).to_dict()
    assert grounded["alignment"] is not None and grounded["model"]["frozen"] == []
    for ablation in study.ABLATION_TABLE:
        tree = study.ablation_config(ablation.name, SCALE, 0, tmp_path).to_dict()
        changed = _diff(grounded, tree) - {"name", "description"}
        named = {key for key, _ in ablation.overrides}
        # a field named whole (model.lora: None -> a LoRA config) differs in itself or below it
        def under(c, n):
            return c == n or c.startswith(n + ".")

        assert {c for c in changed if not any(under(c, n) for n in named)} == set(), ablation.name
        assert {n for n in named if not any(under(c, n) for c in changed)} == set(), ablation.name
    by_hand = {  # what each names, read off the tree
        "no_context": ("data", "pipeline", "sequence", "context", "off"),
        "shuffled_stages": ("data", "pipeline", "sequence", "context", "shuffled"),
        "blind": ("data", "pipeline", "blank_images", grounded["model"]["vision"]["pixel_mean"]),
        "no_prior": ("data", "pipeline", "sequence", "no_prior", True),
        "report_only": ("data", "pipeline", "sequence", "stages", [8]),
        "frozen_vision": ("model", "frozen", ["vision"]),
    }
    for name, (*path, value) in by_hand.items():
        node = study.ablation_config(name, SCALE, 0, tmp_path).to_dict()
        for key in path:
            node = node[key]
        assert node == value, name
    lora = study.ablation_config("lora_r8", SCALE, 0, tmp_path).to_dict()["model"]
    assert (lora["lora"]["rank"], lora["lora"]["alpha"], lora["frozen"]) == (8, 16.0, ["vision", "projector", "text"])


def test_the_study_is_the_demo_scale_with_a_seed(tmp_path):
    default = study.ablation_config("grounded", root=tmp_path)
    assert (default.data.phantom_studies, default.data.phantom_size, default.train.num_steps) == (3000, 256, 300)
    assert default.alignment.num_steps == 2500 and default.eval.contexts == ("own", "teacher", "none", "swapped")
    seed2 = study.ablation_config("grounded", seed=2, root=tmp_path)
    assert (seed2.train.seed, seed2.data.pipeline.seed) == (2, 2)
    assert seed2.data.path == default.data.path  # the phantom set is never seeded by the run's seed
    with pytest.raises(ValueError, match="unknown ablation 'nope'; known: grounded, no_context"):
        study.ablation_config("nope")


def test_shared_alignment_is_computed_once_reused_and_recomputed_when_its_config_changes(tmp_path):
    calls = []

    def fake_phase(cfg, out):
        calls.append((cfg.name, out.name))
        (out / "checkpoints").mkdir()

    dirs = {name: study.shared_alignment(name, SCALE, 0, tmp_path, train=fake_phase)
            for name in ("grounded", "no_context", "lora_r8", "report_only", "no_prior", "shuffled_stages")}
    assert len(calls) == 1 and len(set(dirs.values())) == 1  # one phase, six ablations
    blind = study.shared_alignment("blind", SCALE, 0, tmp_path, train=fake_phase)
    assert len(calls) == 2 and blind != dirs["grounded"]  # blanked images: another phase
    study.shared_alignment("grounded", SCALE, 1, tmp_path, train=fake_phase)
    assert len(calls) == 3  # another seed
    longer = study.StudyScale(**{**SCALE.__dict__, "alignment_steps": 3})
    again = study.shared_alignment("no_context", longer, 0, tmp_path, train=fake_phase)
    assert len(calls) == 4 and again != dirs["grounded"]  # a changed config recomputes
    chains_longer = study.StudyScale(**{**SCALE.__dict__, "steps": 7})
    assert study.shared_alignment("grounded", chains_longer, 0, tmp_path, train=fake_phase) == dirs["grounded"]
    fewer_eval = study.StudyScale(**{**SCALE.__dict__, "eval_studies": 1})
    assert study.shared_alignment("grounded", fewer_eval, 0, tmp_path, train=fake_phase) == dirs["grounded"]
    assert len(calls) == 4  # the chains' steps and the evaluation are not the alignment phase's config


def test_an_interrupted_shared_phase_is_computed_again(tmp_path):
    calls = []

    def failing(out):
        calls.append(out)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.shared_output(tmp_path, "thing", {"a": 1}, failing)
    done = study.shared_output(tmp_path, "thing", {"a": 1}, calls.append)
    assert len(calls) == 2 and done.name == f"thing-{study.config_key({'a': 1})}"
    study.shared_output(tmp_path, "thing", {"a": 1}, calls.append)
    assert len(calls) == 2


def _closed(study_id, turn, correct, context, stage=3, question=None):
    return PredictionRecord(study_id, turn, stage, "Findings_Identification", "yes_no",
                            question or f"q{turn}?", "Yes.", "x", context, scores={"correct": correct})


def _runs(records):
    seeds = tuple(sorted(records))
    return answers_lib.StudyRuns(seeds, {s: {n: {} for n in records[s]} for s in seeds}, records)


def test_answers_pair_turns_across_seeds_and_runs_that_evaluate_fewer_turns():
    """grounded/own is right on turns 0 and 1 of every study, no_context/none on turn 0 only; a
    third turn, which no_context does not evaluate (it pairs by question, not position), is wrong
    for grounded. Paired turns: 2 per study-seed, a = 1, b = 1/2, every replicate 1/2."""
    records = {}
    for seed in (0, 1):
        g = [_closed(f"s{i}", t, t < 2, "own") for i in range(6) for t in range(2)]
        g += [_closed(f"s{i}", 2, False, "own", question="extra?") for i in range(6)]
        # no_context evaluates the same two questions at other positions
        n = [_closed(f"s{i}", 5 + t, t == 0, "none", question=f"q{t}?") for i in range(6) for t in range(2)]
        records[seed] = {"grounded": g, "no_context": n}
    spec = answers_lib.ANSWERS[0]
    assert spec.a == ("grounded", "own") and spec.b == ("no_context", "none")
    entry = answers_lib.answer(spec, _runs(records), resamples=200)
    assert (entry["n_studies"], entry["n_turns"], entry["seeds"]) == (12, 24, [0, 1])
    assert entry["difference"] == pytest.approx(0.5)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((0.5, 0.5))
    assert entry["verdict"] == "a detectable gain"


def test_an_interval_covering_zero_is_no_detectable_effect_and_a_missing_run_is_not_measured():
    """Half the studies favour a by one turn, half favour b: the difference is 0 by hand and the
    interval straddles it."""
    g, n = [], []
    for i in range(20):
        g.append(_closed(f"s{i}", 0, i % 2 == 0, "own"))
        n.append(_closed(f"s{i}", 0, i % 2 == 1, "none"))
    entry = answers_lib.answer(answers_lib.ANSWERS[0], _runs({0: {"grounded": g, "no_context": n}}), resamples=300)
    assert entry["difference"] == pytest.approx(0.0)
    assert entry["ci_low"] < 0 < entry["ci_high"] and entry["verdict"] == "no detectable effect"
    missing = answers_lib.answer(answers_lib.ANSWERS[1], _runs({0: {"grounded": g}}), resamples=10)
    assert missing["difference"] is None and missing["verdict"].startswith("not measured")


def _section(overall, stages):
    return {"overall": {"metrics": {"accuracy": {"value": overall}}},
            "by_stage": {s: {"metrics": {"accuracy": {"value": v}}} for s, v in stages.items()}}


def _metrics(own, swapped):
    return {"contexts": {"own": _section(own, {"2": own, "3": own}), "teacher": _section(0.9, {"2": 0.9}),
                         "none": _section(0.4, {"2": 0.4}), "swapped": _section(swapped, {"2": swapped, "3": swapped})},
            "baselines": {"majority": _section(0.5, {"2": 0.5, "3": 0.6})},
            "error_propagation": {"first_errors": {"own": {"later_stage_accuracy": {
                "3": {"with_earlier_error": {"value": 0.2}, "without_earlier_error": {"value": 0.8}}}}}}}


def test_study_json_schema_and_means_over_seeds(tmp_path):
    runs = answers_lib.StudyRuns(
        (0, 1), {0: {"grounded": _metrics(0.8, 0.6)}, 1: {"grounded": _metrics(0.6, 0.6)}},
        {0: {"grounded": [_closed("s0", 0, True, "own"), _closed("s0", 0, False, "swapped")]},
         1: {"grounded": [_closed("s0", 0, True, "own"), _closed("s0", 0, True, "swapped")]}})
    out = answers_lib.study_json(runs, resamples=50)
    assert set(out) == {"seeds", "runs", "answers"} and out["seeds"] == [0, 1]
    assert set(out["runs"]) == {"grounded"} and set(out["runs"]["grounded"]) == {"own", "teacher", "none"}
    own = out["runs"]["grounded"]["own"]
    assert set(own) == set(answers_lib.RUN_KEYS)
    assert own["accuracy"] == pytest.approx(0.7) and own["swapped_accuracy"] == pytest.approx(0.6)
    assert own["image_gain"] == pytest.approx(0.1) and own["baseline_accuracy"] == pytest.approx(0.5)
    assert set(own["per_stage"]) == {"2", "3"} and all(set(s) == set(answers_lib.STAGE_KEYS)
                                                       for s in own["per_stage"].values())
    assert own["per_stage"]["3"]["baseline"] == pytest.approx(0.6)
    assert (own["per_stage"]["3"]["with_earlier_error"], own["per_stage"]["3"]["without_earlier_error"]) == (0.2, 0.8)
    assert out["runs"]["grounded"]["teacher"]["swapped_accuracy"] is None
    assert len(out["answers"]) == len(answers_lib.ANSWERS)
    assert all(set(answers_lib.ANSWER_KEYS) <= set(a) for a in out["answers"])
    image = next(a for a in out["answers"] if a["b"] == "grounded/swapped")
    assert (image["difference"], image["n_studies"]) == (pytest.approx(0.5), 2)  # s0 of seeds 0 and 1
    assert {a["number"] for a in out["answers"]} == {1, 2, 3, 4, 5, 6}
    json.dumps(out)  # JSON-able


@pytest.mark.slow
def test_the_whole_study_on_tiny_writes_md_png_json_and_skips_finished_runs(tmp_path, capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    argv = ["run", "--only", "grounded", "no_context", "report_only", "--root", str(root), "--out", str(out),
            "--studies", "20", "--steps", "2", "--alignment-steps", "2", "--eval-studies", "2", "--no-progress",
            "--set", "data.phantom_size=64", "--set", "data.phantom_splits=train=16,validation=2,test=2",
            "--set", "data.pipeline.length_buckets=256,512", "--set", "alignment.length_buckets=256,512",
            "--set", "tokenizer.vocab_size=600", "--set", "train.eval_batches=1", "--set", "eval.max_new_tokens=8",
            "--set", "checkpoint.save_every=2", "--set", "mesh.tensor=2"]
    assert study.main(argv) == 0
    assert len(list((root / "shared").glob("alignment-*"))) == 1
    data = json.loads((out / "ablations.json").read_text())
    assert data["seeds"] == [0] and set(data["runs"]) == {"grounded", "no_context", "report_only"}
    md = (out / "ablations.md").read_text()
    assert md.index("## Answers") < md.index("## Per stage") and (out / "ablations.png").stat().st_size > 0
    capsys.readouterr()
    assert study.main(argv) == 0
    assert capsys.readouterr().out.count("finished; skipped") == 3
