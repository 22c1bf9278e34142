"""One way to open a data set, one split rule: `train`, `eval`, `infer` and `report` agree on
which studies are in which split, whatever the form of --data.

The released-format fixture of tests/test_released_data.py (12 studies of 6 patients) in three
forms: the JSON without `split` fields (as the authors release it: split by the patient hash),
the same JSON with its `split` fields (patients 0-3 train, 4 validation, 5 test) and the TFDS dir
built from the first. The expected splits are worked out here from the rule as documented
(sha256 of "seed NUL pat_id" -> u in [0, 1); test below the test fraction, validation below test
+ validation), independently of the code under test. One tiny model is trained once (on the JSON
without split fields) and evaluated, run and reported on every form.
"""

import copy
import hashlib
import json

import pytest

from cxrtrek_jax.cli import main
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from test_released_data import _released_sample

VAL, TEST, SEED = 0.25, 0.25, 26  # with 6 patients: 4 train, 1 validation, 1 test
RULE = ["--val-fraction", str(VAL), "--test-fraction", str(TEST), "--split-seed", str(SEED)]
FAST = ["--max-new-tokens", "2", "--batch-size", "8"]
SCORE_FAST = ["--no-meteor", "--bootstrap-resamples", "10", "--no-progress", "--context", "own"]


def _hash_split(pat_id: str) -> str:
    u = int.from_bytes(hashlib.sha256(f"{SEED}\x00{pat_id}".encode()).digest()[:8], "big") / 2.0**64
    return "test" if u < TEST else "validation" if u < TEST + VAL else "train"


def _key(element) -> str:
    data = element["data_dict"]["cxrtrek_data"]
    return f"{data['source']}/{data['pat_id']}/{data['study_id']}"


def _ids(elements, split_of, split):
    return {_key(e) for e in elements if split_of(e) == split}


@pytest.fixture(scope="module")
def forms(jax_compilation_cache, tmp_path_factory):
    """(root, {form: (--data arguments, expected test ids, expected train ids)}, paths). Every
    command below builds its own decoder from one checkpoint: the module's compilation cache
    (conftest) compiles their functions once."""
    root = tmp_path_factory.mktemp("data_arguments")
    with_split, images, elements, _ = _released_sample(root)
    bare = copy.deepcopy(elements)
    for element in bare:
        del element["data_dict"]["cxrtrek_data"]["split"]
    without_split = root / "released_no_split.json"
    without_split.write_text(json.dumps(bare, indent=4))
    tfds = root / "tfds"
    assert main(["data", "build-tfds", "--json", str(without_split), "--image-root", str(images),
                 "--out", str(tfds), *RULE]) == 0

    def by_hash(e):
        return _hash_split(e["data_dict"]["cxrtrek_data"]["pat_id"])

    def by_field(e):
        return e["data_dict"]["cxrtrek_data"]["split"]

    hashed = (_ids(elements, by_hash, "test"), _ids(elements, by_hash, "train"))
    fielded = (_ids(elements, by_field, "test"), _ids(elements, by_field, "train"))
    assert hashed != fielded and all(hashed) and all(fielded)  # the two rules differ, no split is empty
    return root, {
        "json_without_split": (["--data", str(without_split), "--image-root", str(images), *RULE], *hashed),
        "json_with_split": (["--data", str(with_split), "--image-root", str(images), *RULE], *fielded),
        "tfds": (["--data", str(tfds)], *hashed),
    }, (without_split, images, tfds)


@pytest.fixture(scope="module")
def checkpoint(forms):
    """A tiny model trained 1 step with `train --set data.kind=json` on the JSON without split
    fields (its TFDS cache goes under runs/ of the working directory: a temporary one here)."""
    root, _, (without_split, images, _) = forms
    workdir = root / "run"
    argv = ["train", "--experiment", "baseline", "--preset", "tiny", "--workdir", str(workdir), "--no-progress",
            "--set", "data.kind=json", "--set", f"data.path={without_split}", "--set", f"data.image_root={images}",
            "--set", f"data.split_rule.val_fraction={VAL}", "--set", f"data.split_rule.test_fraction={TEST}",
            "--set", f"data.split_rule.seed={SEED}", "--set", "data.length_buckets=256,512",
            "--set", "data.global_batch_size=4", "--set", "tokenizer.vocab_size=600",
            "--set", "train.num_steps=1", "--set", "train.log_every=1", "--set", "train.eval_batches=0",
            "--set", "checkpoint.save_every=1", "--set", "optim.total_steps=2", "--set", "optim.warmup_steps=1",
            "--set", "data.coverage_studies=1", "--set", "model.max_images=4", "--set", "mesh.tensor=2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(argv) == 0
    return workdir / "checkpoints", root / "runs" / "tfds_cache" / without_split.stem


def _one_record(study_id: str) -> str:
    record = PredictionRecord(study_id, 0, 1, "View_Information", "captioning", "Which view?", "", "PA.", "own")
    return record.to_json() + "\n"


def _split_ids(tfds_dir, split):
    from data_pipeline.files.sources import TfdsStudySource

    source = TfdsStudySource(tfds_dir, split)
    return {source[i].study.key for i in range(len(source))}


def test_train_splits_json_by_the_rule_of_the_other_commands(forms, checkpoint):
    _, cases, _ = forms
    _, expected_test, expected_train = cases["json_without_split"]
    _, built = checkpoint
    assert _split_ids(built, "test") == expected_test and _split_ids(built, "train") == expected_train


@pytest.mark.parametrize("form", ["json_without_split", pytest.param("json_with_split", marks=pytest.mark.slow),
                                  pytest.param("tfds", marks=pytest.mark.slow)])
def test_eval_infer_and_report_agree_on_the_split(form, forms, checkpoint, capsys):
    root, cases, _ = forms
    data_args, expected_test, expected_train = cases[form]
    ckpt, _ = checkpoint
    out = root / f"eval_{form}"
    assert main(["eval", "--checkpoint", str(ckpt), *data_args, "--split", "test", "--out", str(out),
                 *FAST, *SCORE_FAST]) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert {json.loads(line)["study_id"] for line in lines} == expected_test
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["identity"]["baseline"]["fitted_on"]["split_studies"] == len(expected_train)
    assert (out / "report.html").is_file()  # whatever the form of --data
    assert all(key in (out / "report.html").read_text() for key in expected_test)

    inferred = root / f"infer_{form}.jsonl"
    assert main(["infer", "--checkpoint", str(ckpt), *data_args, "--split", "test", "--out", str(inferred),
                 *FAST]) == 0
    assert {json.loads(line)["study_id"] for line in inferred.read_text().splitlines()} == expected_test

    page = root / f"report_{form}.html"
    assert main(["report", "--predictions", str(inferred), *data_args, "--split", "test", "--out", str(page)]) == 0
    assert f"{len(expected_test)} stud(ies)" in capsys.readouterr().out
    # A study of another split is not in the test split's data: the report says so.
    other = root / f"other_{form}.jsonl"
    train_study = sorted(expected_train)[0]
    other.write_text(_one_record(train_study))
    assert main(["report", "--predictions", str(other), *data_args, "--split", "test", "--out", str(page)]) == 2
    assert f"not in the data: {train_study!r}" in capsys.readouterr().err


def test_data_argument_errors_name_the_flag(forms, checkpoint, capsys):
    root, _, (without_split, images, tfds) = forms
    ckpt, _ = checkpoint
    base = ["eval", "--checkpoint", str(ckpt), "--out", str(root / "bad"), *SCORE_FAST]
    assert main([*base, "--data", str(tfds), "--image-root", str(images)]) == 2
    assert "TFDS data dir" in capsys.readouterr().err
    assert main([*base, "--data", str(tfds), "--test-fraction", "0.5"]) == 2
    assert "split rule goes with a CXRTrek JSON file" in capsys.readouterr().err
    assert main([*base, "--data", str(without_split), "--image-root", str(images), "--split", "holdout"]) == 2
    assert "--split holdout: unknown split" in capsys.readouterr().err
    assert main([*base, "--data", str(root / "absent.json")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main([*base, "--data", str(root), "--split", "test"]) == 2  # a folder with no built data set
    assert "no built cxrtrek data set" in capsys.readouterr().err
