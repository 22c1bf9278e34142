"""Each report source, from a fixture in its published layout, through the whole product:
`data construct` -> `data validate` (0 errors) -> `data build-tfds` -> `train` (tiny, 2 steps)
-> `eval` -> `report`, all through the `cxrtrek` command line."""

import json

import pytest

from construct_fixtures import SOURCE_WRITERS
from cxrtrek_jax.cli import main
from data_pipeline.construct.construct_run import SUMMARY_FILE, shard_paths
from data_pipeline.files.cxrtrek_json import read_studies

FAST_EVAL = ["--max-new-tokens", "2", "--no-meteor", "--bootstrap-resamples", "10", "--no-progress"]
# The four sources train and decode the same tiny model with the same shapes: JAX's persistent
# compilation cache (this module only) compiles each function once for all four.
pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


def _image_root(fixture) -> str:
    return fixture.options.get("image_root") or fixture.options["root"]


# MIMIC-CXR runs in make test; the other sources end to end in make test-slow (their readers are in
# test_construct_sources.py).
@pytest.fixture(scope="module", params=[name if name == "mimic-cxr" else pytest.param(name, marks=pytest.mark.slow)
                                        for name in sorted(SOURCE_WRITERS)])
def constructed(request, tmp_path_factory):
    """(fixture, output folder) after `cxrtrek data construct` on that source's fixture."""
    folder = tmp_path_factory.mktemp(request.param)
    fixture = SOURCE_WRITERS[request.param](folder)
    out = folder / "constructed"
    assert main(["data", "construct", *fixture.cli_args, "--out", str(out), "--no-progress"]) == 0
    return fixture, out


def test_construct_writes_every_study_with_its_timeline(constructed, capsys):
    fixture, out = constructed
    studies = [s for path in shard_paths(out) for s in read_studies(path)]
    assert {(s.pat_id, s.study_id) for s in studies} == set(fixture.study_keys)
    assert all(s.source == fixture.source for s in studies)
    patient_a = fixture.study_keys[0][0]  # the patient with three dated studies
    by_id = {s.study_id: s for s in studies if s.pat_id == patient_a}
    linked = fixture.timeline
    for earlier, later in zip(linked, linked[1:]):  # patient A's studies in time order
        assert by_id[later].ref_study_id == earlier and by_id[earlier].pos_study_id == later
        assert {item.stage for item in by_id[later].items} >= {5}
        assert {item.stage for item in by_id[earlier].items} >= {6}
    if linked:
        assert 5 not in {item.stage for item in by_id[linked[0]].items}
        assert 6 not in {item.stage for item in by_id[linked[-1]].items}
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["studies"] == len(fixture.study_keys) and summary["skipped"] == []
    assert summary["qa_pairs"] == sum(len(s.items) for s in studies)


def test_validate_build_train_eval_and_report(constructed, tmp_path, capsys):
    fixture, out = constructed
    image_root = _image_root(fixture)
    shards = [str(p) for p in shard_paths(out)]
    for shard in shards:
        assert main(["data", "validate", shard, "--image-root", image_root]) == 0
        printed = capsys.readouterr().out
        assert "errors: 0" in printed and "result: OK" in printed, printed

    tfds = tmp_path / "tfds"  # patients without an official split all train; eval reads every split
    assert main(["data", "build-tfds", "--json", *shards, "--image-root", image_root, "--out", str(tfds),
                 "--val-fraction", "0", "--test-fraction", "0"]) == 0
    assert "dropped: 0 sample(s)" in capsys.readouterr().out

    workdir = tmp_path / "run"
    assert main(["train", "--experiment", "baseline", "--preset", "tiny", "--workdir", str(workdir), "--no-progress",
                 "--set", "data.kind=tfds", "--set", f"data.path={tfds}", "--set", "data.length_buckets=512",
                 "--set", "data.global_batch_size=4", "--set", "tokenizer.vocab_size=600", "--set", "mesh.tensor=2",
                 "--set", "train.num_steps=2", "--set", "train.log_every=1", "--set", "train.eval_batches=0",
                 "--set", "checkpoint.save_every=2", "--set", "optim.total_steps=2",
                 "--set", "optim.warmup_steps=1", "--set", "model.max_images=6"]) == 0
    capsys.readouterr()

    evaluation = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(workdir / "checkpoints"), "--data", str(tfds), "--split", "all",
                 "--context", "own", "--out", str(evaluation), *FAST_EVAL]) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in (evaluation / "predictions.jsonl").read_text().splitlines()]
    studies = [s for shard in shards for s in read_studies(shard)]
    assert len(records) == sum(len(s.items) for s in studies), printed

    report = tmp_path / "report.html"
    assert main(["report", "--predictions", str(evaluation / "predictions.jsonl"), "--data", shards[0],
                 "--image-root", image_root, "--out", str(report)]) == 0
    assert studies[0].study_id in report.read_text()
