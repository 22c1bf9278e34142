"""`cxrtrek eval --checkpoint`: decode a phantom test split in every context mode, score it, and
reproduce the metrics from the predictions file alone."""

import json

import pytest
import jax

from cxrtrek_jax.cli import main
import numpy as np

from cxrtrek_jax.evaluation.runs.model_eval import EvalData, iter_eval_studies, with_foreign_images
from cxrtrek_jax.evaluation.scores.predictions import read_predictions
from cxrtrek_jax.train.run import train_experiment
from data_pipeline.files.cxrtrek_json import read_studies
from experiments import get_experiment

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # each evaluation compiles the same decoder

FAST = ["--max-new-tokens", "3", "--no-meteor", "--bootstrap-resamples", "20", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model trained a few steps by the project's trainer on a phantom set (train/validation/
    test splits); the tiny preset has two image slots, so studies with a lateral and a prior view
    have turns the model cannot take. Phantom seed 1 puts such a study in the test split (a
    4-image study, 7 of its 22 turns need more than two images; seed 0 has none there)."""
    root = tmp_path_factory.mktemp("model_eval")
    cfg = get_experiment("baseline", "tiny").override({
        "data.path": str(root / "phantom"), "data.phantom_studies": 10, "data.phantom_size": 64,
        "data.phantom_seed": 1,
        "data.phantom_splits": "train=0.6,validation=0.1,test=0.3", "data.length_buckets": "256,512",
        "data.global_batch_size": 2, "tokenizer.vocab_size": 500, "train.num_steps": 6,
        "train.eval_batches": 1, "checkpoint.save_every": 6, "optim.warmup_steps": 1,
        "optim.total_steps": 50,
    })
    result = train_experiment(cfg, root / "run", progress=False, devices=jax.devices()[:1])
    assert result.final_step == 6
    return dict(root=root, data=root / "phantom" / "cxrtrek.json", ckpt=str(root / "run" / "checkpoints"),
                image_slots=cfg.model.max_images)


def test_split_selection_and_image_geometry(world):
    studies = read_studies(world["data"])
    test_ids = [s.key for s in studies if s.cxrtrek_extras["split"] == "test"]
    picked = list(iter_eval_studies(EvalData(world["data"], split="test"), 32))
    assert [s.key for s, _ in picked] == test_ids
    assert all(images.shape == (s.num_images, 32, 32) for s, images in picked)
    assert len(list(iter_eval_studies(EvalData(world["data"], split=None, max_studies=4), 32))) == 4


def test_swapped_context_gives_every_study_another_studys_images_in_its_own_layout():
    counts = [2, 1, 3, 1]
    studies = [(f"s{i}", np.full((n, 2, 2), float(i))) for i, n in enumerate(counts)]
    out = list(with_foreign_images(iter(studies)))
    assert [s for s, _ in out] == ["s0", "s1", "s2", "s3"]
    for (name, own), (_, given) in zip(studies, out):
        assert given.shape == own.shape  # same number of images
        assert not np.isin(given, own).any()  # none of its own
    assert [float(g[0, 0, 0]) for _, g in out] == [1.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="at least two studies"):
        list(with_foreign_images(iter(studies[:1])))


def test_swapped_context_through_the_cli(world, capsys):
    out = world["root"] / "eval_swapped"
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", str(world["data"]), "--out", str(out),
                 "--context", "own,swapped", "--baseline-split", "none", *FAST]) == 0
    capsys.readouterr()
    records = list(read_predictions(out / "predictions.jsonl"))
    own = [(r.study_id, r.turn_index) for r in records if r.context == "own"]
    assert own and own == [(r.study_id, r.turn_index) for r in records if r.context == "swapped"]
    assert set(json.loads((out / "metrics.json").read_text())["contexts"]) == {"own", "swapped"}
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", str(world["data"]), "--out", str(out),
                 "--context", "own,upside_down", *FAST]) == 2
    assert "upside_down" in capsys.readouterr().err


def test_all_context_modes_are_decoded_scored_and_reproducible(world, capsys):
    out = world["root"] / "eval"
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", str(world["data"]), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    records = list(read_predictions(out / "predictions.jsonl"))
    studies = {s.key: s for s in read_studies(world["data"]) if s.cxrtrek_extras["split"] == "test"}
    metrics = json.loads((out / "metrics.json").read_text())
    # Which turns the model cannot take, from the data file alone: more images than its slots.
    slots = world["image_slots"]
    too_many = {(key, index) for key, s in studies.items()
                for index, item in enumerate(s.items) if item.image_input_count > slots}
    assert too_many, "the fixture must hold turns needing more images than the model's image slots"
    expected_skips = {key: sum(k == key for k, _ in too_many) for key in {k for k, _ in too_many}}
    assert metrics["identity"]["turns_skipped_image_limit"] == expected_skips
    assert (f"note: {len(too_many)} turn(s) of {len(expected_skips)} study(ies) need more images than "
            "the model's image slots and were not asked") in printed
    asked = {(key, index) for key, s in studies.items() for index in range(len(s.items))} - too_many
    for context in ("own", "teacher", "none"):
        mine = [(r.study_id, r.turn_index) for r in records if r.context == context]
        assert len(mine) == len(set(mine)) and set(mine) == asked, context
    for r in records:  # every record is a real turn of its study, with its reference
        item = studies[r.study_id].items[r.turn_index]
        assert (r.stage, r.question, r.reference) == (item.stage, item.question, item.answer)
    assert metrics["identity"]["data_split"] == "test" and metrics["identity"]["checkpoint_step"] == 6
    for name in ("metrics.md", "stages.png", "report.html", "predictions.scored.jsonl", "baseline_predictions.jsonl"):
        assert (out / name).exists(), name
    # The majority baseline answered each asked turn once, from the training split's references.
    baseline = list(read_predictions(out / "baseline_predictions.jsonl"))
    assert sorted((r.study_id, r.turn_index) for r in baseline) == sorted(
        (r.study_id, r.turn_index) for r in records if r.context == "own")
    train_studies = sum(s.cxrtrek_extras["split"] == "train" for s in read_studies(world["data"]))
    assert metrics["identity"]["baseline"]["fitted_on"]["split_studies"] == train_studies
    majority = metrics["baselines"]["majority"]
    assert majority["overall"]["n_items"] == len(asked)
    assert "majority baseline" in (out / "metrics.md").read_text()
    again = world["root"] / "rescored"
    assert main(["eval", "--predictions", str(out / "predictions.jsonl"), "--baseline-predictions",
                 str(out / "baseline_predictions.jsonl"), "--out", str(again), *FAST[2:]]) == 0
    rescored = json.loads((again / "metrics.json").read_text())
    metrics.pop("identity"), rescored.pop("identity")
    assert rescored == metrics


def test_bad_arguments_are_clear_errors(world, capsys):
    out = str(world["root"] / "bad")
    assert main(["eval", "--checkpoint", world["ckpt"], "--out", out, *FAST]) == 2
    assert "--checkpoint needs --data" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", str(world["data"]), "--split", "nope",
                 "--out", out, *FAST]) == 2
    assert "--split nope: unknown split 'nope'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(world["root"] / "missing"), "--data", str(world["data"]),
                 "--out", out, *FAST]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", world["ckpt"], "--data", str(world["data"]), "--baseline-split", "nope",
                 "--out", out, *FAST]) == 2
    assert "--baseline-split nope" in capsys.readouterr().err
    assert main(["eval", "--predictions", str(world["root"] / "none.jsonl"), "--data", "x", "--out", out]) == 2
