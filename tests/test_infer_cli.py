"""`cxrtrek infer` on a phantom study set, a DICOM file and a hand-written CXRTrek JSON file,
with a tiny randomly initialised checkpoint written here, and its user-facing errors."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image
from pydicom.data import get_testdata_file

from cxrtrek_jax.train.checkpointing import save_params_only
from cxrtrek_jax.cli import main
from cxrtrek_jax.evaluation.scores.predictions import read_predictions
from cxrtrek_jax.model import CXRTrekNet, get_config, override, to_dict
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

COMMON = ["--max-new-tokens", "4", "--cache-length", "512"]
pytestmark = pytest.mark.usefixtures("jax_compilation_cache")  # each CLI call compiles the same decoder


def _checkpoint(directory, config, tokenizer_dir, seed=0):
    model = CXRTrekNet(config, rngs=nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    save_params_only(str(directory), params, model_config=to_dict(config), tokenizer_path=str(tokenizer_dir))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    data = write_phantom_dataset(root / "phantom", 2, seed=4, config=PhantomConfig(size=64, turns_per_study=(4, 6)))
    tokenizer = train_tokenizer(training_texts(read_studies(data)), 500)
    tokenizer.save(root / "tokenizer")
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 4})
    _checkpoint(root / "ckpt", config, root / "tokenizer")
    return dict(root=root, data=data, ckpt=str(root / "ckpt"), config=config)


def test_phantom_studies_in_teacher_context_write_predictions(files, capsys):
    out = files["root"] / "phantom.jsonl"
    code = main(["infer", "--checkpoint", files["ckpt"], "--data", str(files["data"]), "--context", "teacher",
                 "--order", "canonical", "--out", str(out), *COMMON])
    assert code == 0
    studies = read_studies(files["data"])
    records = list(read_predictions(out))
    assert len(records) == sum(len(s.items) for s in studies)
    assert {r.study_id for r in records} == {s.key for s in studies}
    first = studies[0]
    mine = [r for r in records if r.study_id == first.key]
    assert [r.stage for r in mine] == sorted(item.stage for item in first.items)
    by_index = {r.turn_index: r for r in mine}
    for index, item in enumerate(first.items):
        assert by_index[index].reference == item.answer and by_index[index].question == item.question
    # --max-new-tokens 4: at most 4 answer tokens, then the end-of-turn (generated or closing the answer).
    assert all(r.context == "teacher" and r.latency_s > 0 and 1 <= r.num_generated_tokens <= 5 for r in records)
    printed = capsys.readouterr().out
    assert f"== study {first.key} (teacher context)" in printed
    assert "[stage 1: image quality and view] Q: " in printed and "reference: " in printed
    assert f"2 studies, {len(records)} turns" in printed


def test_dicom_image_runs_the_default_script(files, capsys):
    """A checkpoint keeping no question script (as before runs kept one) asks the built-in one, and says so."""
    dicom = get_testdata_file("RG1_UNCR.dcm")
    code = main(["infer", "--checkpoint", files["ckpt"], "--image", dicom, *COMMON])
    assert code == 0
    printed = capsys.readouterr().out
    assert ("questions: the built-in phantom-wording script (this checkpoint keeps no question script: trained "
            "before this version or imported from Hugging Face)\n") in printed
    assert "skipped, no prior image: stage 5 (comparison with the prior study)\n" in printed
    assert "== study RG1_UNCR (own context)" in printed
    assert "Which projection was used for this frontal chest radiograph?" in printed
    assert "[stage 8: report generation] Q: Write the radiology report" in printed


def test_content_only_json_with_a_prior_in_none_context(files, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("now.png", "before.png"):
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(images / name)
    items = [
        {"stage": 2, "task_type": "Findings_Identification", "qtype": "yes_no", "image_input_count": 1,
         "question": "<image>\nIs there a pneumothorax?", "answer": "No."},
        {"stage": 5, "task_type": "Differences_Comparison", "qtype": "captioning", "image_input_count": 2,
         "question": "Prior radiograph: <image> . What has changed?", "answer": "Nothing."},
        {"stage": 1, "task_type": "View_Information", "qtype": "captioning", "image_input_count": 1,
         "question": "Which view is it?", "answer": "PA."},
    ]
    study = {"study_id": "s1", "ref_study_id": "s0", "image": ["images/now.png", "images/before.png"],
             "content": items}
    data = tmp_path / "one.json"
    data.write_text(json.dumps([{"data_dict": {"cxrtrek_data": study}}]))
    out = tmp_path / "none.jsonl"
    code = main(["infer", "--checkpoint", files["ckpt"], "--data", str(data), "--context", "none",
                 "--out", str(out), *COMMON])
    assert code == 0
    records = list(read_predictions(out))
    assert [r.turn_index for r in records] == [0, 1, 2] and [r.stage for r in records] == [2, 5, 1]
    assert all(r.context == "none" for r in records)


def test_cli_choices_match_the_library():
    from cxrtrek_jax.cli import infer_cmd
    from cxrtrek_jax.decoding import ORDERS

    assert infer_cmd._ORDERS == ORDERS


def _error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_clear_errors(files, tmp_path, capsys):
    ckpt = files["ckpt"]
    fake = tmp_path / "scan.png"
    fake.write_text("not an image")
    assert "unreadable image" in _error(capsys, ["infer", "--checkpoint", ckpt, "--image", str(fake)])
    assert str(fake) in _error(capsys, ["infer", "--checkpoint", ckpt, "--image", str(fake)])
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert "holds no studies" in _error(capsys, ["infer", "--checkpoint", ckpt, "--data", str(empty)])
    assert "--context teacher needs reference answers" in _error(
        capsys, ["infer", "--checkpoint", ckpt, "--image", str(fake), "--context", "teacher"])
    assert "does not exist" in _error(capsys, ["infer", "--checkpoint", str(tmp_path / "nope"), "--image", str(fake)])
    assert "--max-new-tokens must be >= 1" in _error(
        capsys, ["infer", "--checkpoint", ckpt, "--image", str(fake), "--max-new-tokens", "0"])

    wrong = override(files["config"], {"text.num_layers": 3})
    mismatched = tmp_path / "mismatched"
    _checkpoint(mismatched, wrong, files["root"] / "tokenizer")
    metadata = json.loads((mismatched / "0" / "metadata" / "metadata").read_text())
    metadata["model_config"] = to_dict(files["config"])  # claims 2 layers, stores 3
    (mismatched / "0" / "metadata" / "metadata").write_text(json.dumps(metadata))
    message = _error(capsys, ["infer", "--checkpoint", str(mismatched), "--image", str(fake)])
    assert "do not match the model config" in message and "unexpected: text/layers/2/" in message


# ---- the question script a run keeps (`RUN/question_script.json`), in words that are not the phantom's

FILM_VIEW = "Which view is this chest film? A. PA B. AP"
FILM_EFFUSION = "Can you confirm a pleural effusion on this film?"
FILM_CHANGE = "How does this film differ from the earlier one?"
FILM_REPORT = "Draft the report for this film."


def _film_studies():
    """Three training studies asking in their own words (one with a prior)."""
    from data_pipeline.schema.records import QAItem, Study

    def item(stage, task_type, qtype, images, question):
        return QAItem(stage=stage, task_type=task_type, qtype=qtype, image_input_count=images, question=question,
                      answer="An answer.")

    return [
        Study(study_id="a", pat_id="p1", images=("a.png",), items=(
            item(1, "View_Information", "single-choice", 1, "<image>\n" + FILM_VIEW),
            item(2, "Findings_Identification", "yes_no", 1, FILM_EFFUSION),
            item(8, "Report_Generation", "captioning", 1, FILM_REPORT))),
        Study(study_id="b", pat_id="p2", ref_study_id="b0", images=("b.png", "b0.png"), items=(
            item(1, "View_Information", "single-choice", 1, "<image>\n" + FILM_VIEW),
            item(2, "Findings_Identification", "yes_no", 1, FILM_EFFUSION),
            item(5, "Differences_Comparison", "captioning", 2, "Earlier film: <image>\n" + FILM_CHANGE),
            item(8, "Report_Generation", "captioning", 2, FILM_REPORT))),
        Study(study_id="c", pat_id="p3", images=("c.png",), items=(
            item(1, "View_Information", "single-choice", 1, "<image>\n" + FILM_VIEW),
            item(2, "Findings_Identification", "yes_no", 1, "Can you confirm cardiomegaly on this film?"),
            item(8, "Report_Generation", "captioning", 1, "Write a report."))),
    ]


@pytest.fixture(scope="module")
def film_run(files, tmp_path_factory):
    """A run directory as the trainer leaves it: the script of a TFDS build of `_film_studies`
    written by the trainer's own function, and a checkpoint whose metadata names it."""
    import os
    from types import SimpleNamespace

    from cxrtrek_jax.train.run import DataPaths, write_run_question_script
    from data_pipeline.files import tfds_builder
    from data_pipeline.files.cxrtrek_json import write_studies

    root = tmp_path_factory.mktemp("film")
    rng = np.random.default_rng(1)
    studies = _film_studies()
    for name in ["now.png", "before.png", *(image for study in studies for image in study.images)]:
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(root / name)
    write_studies(root / "films.json", studies)
    split = tfds_builder.SplitConfig(val_fraction=0.0, test_fraction=0.0)
    tfds_builder.build_dataset(tfds_builder.BuildOptions((str(root / "films.json"),), split), root, root / "tfds")
    run = root / "run"
    run.mkdir()
    cfg = SimpleNamespace(data=SimpleNamespace(path=str(root / "films.json"), train_split="train"))
    write_run_question_script(cfg, DataPaths(tfds_dir=str(root / "tfds")), run / "question_script.json")
    model = CXRTrekNet(files["config"], rngs=nnx.Rngs(0))
    save_params_only(str(run / "checkpoints"), nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                     model_config=to_dict(files["config"]), tokenizer_path=str(files["root"] / "tokenizer"),
                     extra_metadata={"question_script_path": os.path.relpath(run / "question_script.json",
                                                                             run / "checkpoints")})
    return dict(root=root, run=run, ckpt=str(run / "checkpoints"))


def test_infer_asks_in_the_words_of_the_checkpoints_training_data(film_run, capsys):
    root, out = film_run["root"], film_run["root"] / "asked.jsonl"
    code = main(["infer", "--checkpoint", film_run["ckpt"], "--image", str(root / "now.png"),
                 "--prior", str(root / "before.png"), "--out", str(out), *COMMON])
    assert code == 0
    asked = [(r.stage, r.question) for r in read_predictions(out)]
    assert asked == [(1, "<image>\n" + FILM_VIEW), (2, FILM_EFFUSION), (5, "Earlier film: <image>\n" + FILM_CHANGE),
                     (8, FILM_REPORT)]
    printed = capsys.readouterr().out
    assert (f"questions: the training data's wording ({(film_run['run'] / 'question_script.json').resolve()}, "
            f"from 3 studies of {root / 'films.json'})") in printed
    assert "phantom-wording" not in printed and "skipped" not in printed

    code = main(["infer", "--checkpoint", film_run["ckpt"], "--image", str(root / "now.png"), "--out", str(out),
                 *COMMON])
    assert code == 0
    assert [r.question for r in read_predictions(out)] == ["<image>\n" + FILM_VIEW, FILM_EFFUSION, FILM_REPORT]
    assert "skipped, no prior image: stage 5 Differences_Comparison\n" in capsys.readouterr().out


def test_data_studies_without_questions_get_the_script_too(film_run, tmp_path, capsys):
    study = {"study_id": "q0", "image": ["now.png"], "content": []}
    data = tmp_path / "no_questions.json"
    data.write_text(json.dumps([{"data_dict": {"cxrtrek_data": study}}]))
    out = tmp_path / "asked.jsonl"
    code = main(["infer", "--checkpoint", film_run["ckpt"], "--data", str(data), "--image-root", str(film_run["root"]),
                 "--out", str(out), *COMMON])
    assert code == 0
    assert [r.question for r in read_predictions(out)] == ["<image>\n" + FILM_VIEW, FILM_EFFUSION, FILM_REPORT]
    printed = capsys.readouterr().out
    assert "from 3 studies of" in printed and "; for the 1 studies without questions\n" in printed
    assert "skipped in 1 of them, no prior image: stage 5 Differences_Comparison\n" in printed


def test_a_broken_or_missing_script_is_a_clear_error(film_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(film_run["run"], run)
    image = str(film_run["root"] / "now.png")
    script = json.loads((run / "question_script.json").read_text())
    script["turns"][1]["qtype"] = "essay"
    (run / "question_script.json").write_text(json.dumps(script))
    message = _error(capsys, ["infer", "--checkpoint", str(run / "checkpoints"), "--image", image])
    assert f"question script {run / 'checkpoints' / '..' / 'question_script.json'}: turns[1].qtype: " in message
    assert "unknown qtype 'essay'" in message
    (run / "question_script.json").unlink()
    message = _error(capsys, ["infer", "--checkpoint", str(run / "checkpoints"), "--image", image])
    assert "names the question script" in message and "which is missing" in message
