"""Validation of CXRTrek data and the `cxrtrek data validate` command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrtrek_jax.cli import main
from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
from data_pipeline.files.validation import Problem, validate_elements, validate_file

CX = "data_dict.cxrtrek_data."


def _item(stage, task_type, qtype, count, question, answer):
    return {
        "stage": stage,
        "task_type": task_type,
        "qtype": qtype,
        "image_input_count": count,
        "question": question,
        "answer": answer,
    }


def good_element(study_id="s1", pat_id="p1"):
    """Two images: the current one introduced in turn 0, the prior one lazily in turn 3."""
    items = [
        _item(1, "View_Information", "single-choice", 1, "View? <image> A. PA. or B. AP.", "A. PA."),
        _item(3, "Findings_Detection", "detection", 1, "Locate the nodule.",
              "<|ref|> nodule <|/ref|> <|box|>(10.0, 20.0), (30.5, 40.0)<|/box|>"),
        _item(2, "Findings_Identification", "yes_no", 1, "Effusion?", "No."),
        _item(5, "Differences_Comparison", "captioning", 2, "Compare with the prior: <image> .", "Stable."),
        _item(8, "Report_Generation[Findings]", "captioning", 2, "Write the findings.", "Lungs are clear."),
    ]
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    for it in items:
        messages += [{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["answer"]}]
    return {
        "messages": messages,
        "image": [f"/abs/{study_id}/a.png", f"/abs/{study_id}/prior.png"],
        "data_dict": {
            "cxrtrek_data": {
                "source": "mimic_cxr-mtxray",
                "pat_id": pat_id,
                "study_id": study_id,
                "ref_study_id": "s0",
                "pos_study_id": "",
                "image": [f"{study_id}/a.png", f"{study_id}/prior.png"],
                "content": items,
            }
        },
    }


def _content(element):
    return element["data_dict"]["cxrtrek_data"]["content"]


def _errors(report):
    return {(p.index, p.field) for p in report.errors}


def test_good_data_counts_and_no_problems():
    report = validate_elements([good_element("s1"), good_element("s2", "p2")])
    assert report.ok and report.errors == () and report.warnings == ()
    assert report.studies == 2 and report.qa_pairs == 10
    assert list(report.per_stage.items()) == [("1", 2), ("2", 2), ("3", 2), ("5", 2), ("8", 2)]
    assert report.per_qtype == {"captioning": 4, "detection": 2, "single-choice": 2, "yes_no": 2}
    assert report.per_task_type["Report_Generation[Findings]"] == 2
    assert report.images_per_study == {2: 2}


def _mutate(fn):
    element = good_element("s9")
    fn(element)
    return element


def _set_item(i, key, value):
    return lambda e: _content(e)[i].__setitem__(key, value)


# (mutation, field that must be reported) — one case per listed error.
ERROR_CASES = {
    "placeholder_count": (
        lambda e: _content(e)[3].__setitem__("question", "Compare with the prior."),
        CX + "content",
    ),
    "non_monotonic_count": (
        lambda e: (_content(e)[3].__setitem__("question", "Compare."),
                   _content(e)[0].__setitem__("question", "Views <image> <image>"),
                   _content(e)[0].__setitem__("image_input_count", 2),
                   _content(e)[1].__setitem__("image_input_count", 1)),
        CX + "content[1].image_input_count",
    ),
    "count_vs_placeholders": (_set_item(2, "image_input_count", 2), CX + "content[2].image_input_count"),
    "count_above_images": (
        lambda e: (e["data_dict"]["cxrtrek_data"]["image"].pop(), e["image"].pop()),
        CX + "content[3].image_input_count",
    ),
    "stage_range": (_set_item(2, "stage", 9), CX + "content[2].stage"),
    "stage_not_int": (_set_item(2, "stage", "abc"), CX + "content[2].stage"),
    "unknown_qtype": (_set_item(2, "qtype", "essay"), CX + "content[2].qtype"),
    "empty_question": (_set_item(4, "question", "  "), CX + "content[4].question"),
    "empty_answer": (_set_item(4, "answer", ""), CX + "content[4].answer"),
    "malformed_box": (_set_item(1, "answer", "<|ref|> nodule <|/ref|> <|box|>(10, 20), (5, 40)<|/box|>"),
                      CX + "content[1].answer"),
    "box_markup_in_captioning": (_set_item(4, "answer", "Clear <|box|>(1, 2)<|/box|>"), CX + "content[4].answer"),
    "image_list_lengths": (lambda e: e["image"].append("/abs/extra.png"), "image"),
    "missing_study_id": (lambda e: e["data_dict"]["cxrtrek_data"].pop("study_id"), CX + "study_id"),
    "bad_role": (lambda e: e["messages"][1].__setitem__("role", "doctor"), "messages[1].role"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_each_error_is_reported_with_index_and_field(case):
    mutate, field = ERROR_CASES[case]
    report = validate_elements([good_element("s0"), _mutate(mutate)])
    assert not report.ok
    assert (1, field) in _errors(report), report.errors
    assert all(p.index == 1 for p in report.errors)
    if case != "missing_study_id":
        assert all(p.study_id == "mimic_cxr-mtxray/p1/s9" for p in report.errors)


def test_every_problem_is_reported_not_just_the_first():
    element = good_element("s9")
    _content(element)[0]["stage"] = 0
    _content(element)[2]["qtype"] = "essay"
    _content(element)[4]["answer"] = ""
    report = validate_elements([element])
    assert {p.field for p in report.errors} == {
        CX + "content[0].stage",
        CX + "content[2].qtype",
        CX + "content[4].answer",
    }


def test_duplicate_study_ids_name_the_first():
    report = validate_elements([good_element("s1"), good_element("s2"), good_element("s1")])
    (problem,) = report.errors
    assert problem == Problem(2, "mimic_cxr-mtxray/p1/s1", CX + "study_id", problem.message)
    assert "first seen at sample 0" in problem.message


def test_a_study_is_source_patient_and_study_id():
    """CheXpert-derived studies are numbered per patient: study1 under two patients (or under
    the same pat_id in two sources) are two studies; the same triple twice is a duplicate."""
    other_source = good_element("study1", pat_id="patient1")
    other_source["data_dict"]["cxrtrek_data"]["source"] = "chexpert-mtxray"
    elements = [good_element("study1", pat_id="patient1"), good_element("study1", pat_id="patient2"),
                other_source]
    assert validate_elements(elements).ok
    report = validate_elements(elements + [good_element("study1", pat_id="patient2")])
    (problem,) = report.errors
    assert (problem.index, problem.study_id) == (3, "mimic_cxr-mtxray/patient2/study1")
    assert "first seen at sample 1" in problem.message


def test_warnings_for_task_type_and_messages():
    element = good_element()
    _content(element)[2]["task_type"] = "Attributes_Description"  # a stage-3 task at stage 2
    element["messages"][2]["content"] = "something else"
    report = validate_elements([element])
    assert report.ok
    assert {p.field for p in report.warnings} == {CX + "content[2].task_type", "messages"}


def test_invalid_stage_is_counted_not_dropped():
    element = good_element()
    _content(element)[0]["stage"] = "abc"
    _content(element)[1]["stage"] = 10
    report = validate_elements([element])
    assert report.qa_pairs == 5
    assert list(report.per_stage) == ["2", "5", "8", "10", "abc"]  # numbers by value, then the rest


def _write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)
    Image.fromarray(pixels).save(path)


def test_missing_image_files_with_image_root(tmp_path):
    _write_png(tmp_path / "s1" / "a.png")  # s1/prior.png is missing
    report = validate_elements([good_element("s1")], image_root=tmp_path)
    assert _errors(report) == {(0, CX + "image[1]")}
    assert validate_elements([good_element("s1")]).ok  # no image root: no file checks


def test_broken_file_is_a_file_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[" + json.dumps(good_element()) + ", {")
    report = validate_file(path)
    assert report.studies == 1
    (problem,) = report.errors
    assert problem.index == 1 and problem.field == "(file)" and str(path) in problem.message


@pytest.fixture()
def data_files(tmp_path):
    _write_png(tmp_path / "images" / "s1" / "a.png")
    _write_png(tmp_path / "images" / "s1" / "prior.png")
    good = tmp_path / "good.json"
    good.write_text(json.dumps([good_element("s1")]))
    bad_element = good_element("s2")
    _content(bad_element)[2]["stage"] = 11
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([good_element("s1"), bad_element]))
    return tmp_path, good, bad


def test_cli_validate_text(data_files, capsys):
    root, good, bad = data_files
    assert main(["data", "validate", str(good), "--image-root", str(root / "images")]) == 0
    out = capsys.readouterr().out
    assert "studies: 1" in out and "qa_pairs: 5" in out and "errors: 0" in out and "result: OK" in out
    assert "image files: checked" in out

    assert main(["data", "validate", str(bad), "--image-root", str(root / "images")]) == 1
    out = capsys.readouterr().out
    assert f"ERROR sample 1 (study mimic_cxr-mtxray/p1/s2) {CX}content[2].stage: stage must be in 1..8, got 11" in out
    # s2's images are missing on disk too.
    assert f"{CX}image[0]" in out and "result: FAILED" in out

    assert main(["data", "validate", str(bad), "--image-root", str(root / "images"), "--no-images"]) == 1
    out = capsys.readouterr().out
    assert "image files: not checked" in out and f"{CX}image[0]" not in out


def test_cli_validate_json(data_files, capsys):
    root, good, bad = data_files
    assert main(["data", "validate", str(good), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "studies", "qa_pairs", "per_stage", "per_task_type", "per_qtype", "images_per_study", "errors", "warnings",
    }
    assert data["per_stage"] == {"1": 1, "2": 1, "3": 1, "5": 1, "8": 1}
    assert data["images_per_study"] == {"2": 1} and data["errors"] == []

    assert main(["data", "validate", str(bad), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["errors"] == [
        {"index": 1, "study_id": "mimic_cxr-mtxray/p1/s2", "field": CX + "content[2].stage", "message": "stage must be in 1..8, got 11"}
    ]


def test_cli_validate_usage_errors(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_validate_as_module(data_files):
    _, _, bad = data_files
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo_root)
    proc = subprocess.run(
        [sys.executable, "-m", "cxrtrek_jax.cli", "data", "validate", str(bad), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["errors"][0]["field"] == CX + "content[2].stage"
