"""Reading and writing the released CXRTrek JSON format."""

import copy
import gzip
import json

import pytest

from data_pipeline.files import cxrtrek_json as cj
from data_pipeline.schema.records import Message, QAItem, Study


def _item(stage, task_type, qtype, count, question, answer, **extras):
    return {
        "stage": stage,
        "task_type": task_type,
        "qtype": qtype,
        "image_input_count": count,
        "question": question,
        "answer": answer,
        **extras,
    }


def released_element(study_id="s5", pat_id="p1"):
    """A released-form element with extras at every level and interleaved stages (3 before 2)."""
    items = [
        _item(1, "Quality_Assessment", "captioning", 1, "Quality? Current image: <image> .", "Good.", polish_flag=True),
        _item(3, "Findings_Detection", "detection", 1, "Where is the opacity?",
              "<|ref|> right apical zone <|/ref|> <|box|>(19.2, 12.5), (43.3, 30.8)<|/box|>"),
        _item(2, "Findings_Identification", "single-choice", 1, "Effusion? A. No. or B. Yes.", "B. Yes.",
              option_list=["A. No.", "B. Yes."], answer_list=["B. Yes."]),
        _item(5, "Differences_Comparison", "captioning", 2, "Changes? Reference X-ray: <image> .", "Unchanged.",
              reason={"nested": [1, 2.5, None]}),
    ]
    messages = [{"role": "system", "content": cj.DEFAULT_SYSTEM_PROMPT, "name": "sys"}]
    for it in items:
        messages += [{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["answer"]}]
    return {
        "messages": messages,
        "image": [f"/remote/Images/chexpert/{pat_id}/{study_id}/v1.png", f"/remote/Images/chexpert/{pat_id}/s3/v1.png"],
        "data_dict": {
            "cxrtrek_data": {
                "source": "chexpert-mtxray",
                "pat_id": pat_id,
                "study_id": study_id,
                "ref_study_id": "s3",
                "pos_study_id": "",
                "image": [f"chexpert/{pat_id}/{study_id}/v1.png", f"chexpert/{pat_id}/s3/v1.png"],
                "content": items,
                "cx_extra": {"k": "v"},
            },
            "dd_extra": 7,
        },
        "top_extra": ["a", {"b": None}],
    }


def write_json(path, value, indent=4):
    path.write_text(json.dumps(value, indent=indent))
    return path


def test_round_trip_keeps_every_field_and_key_order(tmp_path):
    elements = [released_element("s5"), released_element("s6", "p2")]
    src = write_json(tmp_path / "in.json", elements)
    studies = cj.read_studies(src)
    assert [s.study_id for s in studies] == ["s5", "s6"]
    s = studies[0]
    assert s.extras == {"top_extra": ("a", {"b": None})}
    assert s.data_dict_extras == {"dd_extra": 7}
    assert s.cxrtrek_extras == {"cx_extra": {"k": "v"}}
    assert s.items[2].extras["option_list"] == ("A. No.", "B. Yes.")
    assert s.messages[0].extras == {"name": "sys"}
    assert s.abs_images[1].endswith("s3/v1.png") and s.images[0] == "chexpert/p1/s5/v1.png"

    out = tmp_path / "out.json"
    assert cj.write_studies(out, studies, indent=4) == 2
    text = out.read_text()
    assert json.loads(text) == elements
    # Same key order at every level, so the pretty-printed text is identical.
    assert text.strip() == json.dumps(elements, indent=4)
    assert cj.read_studies(out) == studies


def test_interleaved_stage_order_is_kept(tmp_path):
    studies = cj.read_studies(write_json(tmp_path / "in.json", [released_element()]))
    assert [item.stage for item in studies[0].items] == [1, 3, 2, 5]
    element = cj.study_to_element(studies[0])
    assert [c["stage"] for c in element["data_dict"]["cxrtrek_data"]["content"]] == [1, 3, 2, 5]


@pytest.mark.parametrize("form", ["wrapped", "bare"])
def test_content_only_forms(tmp_path, form):
    record = copy.deepcopy(released_element()["data_dict"]["cxrtrek_data"])
    element = {"data_dict": {"cxrtrek_data": record}} if form == "wrapped" else record
    (study,) = cj.read_studies(write_json(tmp_path / "in.json", [element]))
    assert study.messages is None and study.abs_images is None
    assert study.cxrtrek_extras == {"cx_extra": {"k": "v"}}
    written = cj.study_to_element(study, "content" if form == "wrapped" else "cxrtrek_data")
    assert written == element
    assert cj.study_to_element(study) == {"data_dict": {"cxrtrek_data": record}}  # auto: content form
    with pytest.raises(ValueError, match="add_released_fields"):
        cj.study_to_element(study, "released")


def test_content_form_drops_messages_and_bare_form_refuses_extras(tmp_path):
    (study,) = cj.read_studies(write_json(tmp_path / "in.json", [released_element()]))
    element = cj.study_to_element(study, "content")
    assert "messages" not in element and "image" not in element and element["top_extra"] == ["a", {"b": None}]
    with pytest.raises(ValueError, match="cannot hold"):
        cj.study_to_element(study, "cxrtrek_data")


def test_derive_released_fields(tmp_path):
    items = (
        QAItem(1, "View_Information", "captioning", 1, "View? <image>", "PA."),
        QAItem(2, "Findings_Identification", "yes_no", 1, "Effusion?", "No."),
    )
    study = Study("s1", pat_id="p1", images=("a/b.png",), items=items)
    full = cj.add_released_fields(study, tmp_path / "root")
    assert full.messages == (
        Message("system", cj.DEFAULT_SYSTEM_PROMPT),
        Message("user", "View? <image>"),
        Message("assistant", "PA."),
        Message("user", "Effusion?"),
        Message("assistant", "No."),
    )
    assert full.abs_images == (str(tmp_path / "root" / "a" / "b.png"),)
    element = cj.study_to_element(full, "released")
    assert list(element) == ["messages", "image", "data_dict"]
    assert cj.parse_study(element) == full
    # Existing fields are kept, not re-derived.
    assert cj.add_released_fields(full, "/elsewhere") is full


def test_ids_normalised(tmp_path):
    record = released_element()["data_dict"]["cxrtrek_data"]
    record["study_id"] = 50414267
    del record["pos_study_id"]
    record["ref_study_id"] = None
    (study,) = cj.read_studies(write_json(tmp_path / "in.json", [record]))
    assert study.study_id == "50414267" and study.ref_study_id == "" and study.pos_study_id == ""


def test_streaming_reader_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(cj, "_CHUNK_CHARS", 7)  # force values and strings to straddle chunks
    elements = [released_element(f"s{i}", f"p{i}") for i in range(5)]
    elements[2]["data_dict"]["cxrtrek_data"]["content"][0]["answer"] = "naïve — ünïcode ✓ 12345.678e-3"
    elements[3]["top_extra"] = 123456789
    path = write_json(tmp_path / "in.json", elements, indent=None)
    assert list(cj.iter_elements(path)) == elements
    gz = tmp_path / "in.json.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [s.study_id for s in cj.iter_studies(gz)] == [f"s{i}" for i in range(5)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("hello", "is not JSON"),
        ('{"a": 1}', "is a JSON object, not a JSON list"),
        ("[{}, {]", "not valid JSON in sample 1"),
        ('[{"a": 1}, {"b": ', "file ends inside sample 1"),
        ('[{"a": 1}', "never closed"),
        ('[{"a": 1}] x', "after the closing"),
        ('[{"a": 1} {"b": 2}]', "expected ',' or ']' after sample 0"),
    ],
)
def test_reader_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(cj.CXRTrekFormatError, match=message) as err:
        list(cj.iter_elements(path))
    assert str(path) in str(err.value)


def test_structural_errors_name_index_study_and_field(tmp_path):
    good = released_element("s1")
    no_id = released_element("s2")
    del no_id["data_dict"]["cxrtrek_data"]["study_id"]
    bad_item = released_element("s3")
    bad_item["data_dict"]["cxrtrek_data"]["content"][1]["stage"] = "abc"
    bad_item["data_dict"]["cxrtrek_data"]["content"][2]["question"] = None
    path = write_json(tmp_path / "in.json", [good, no_id, bad_item, 5, {"messages": []}])

    elements = list(cj.iter_elements(path))
    with pytest.raises(cj.CXRTrekFormatError, match=r"sample 1: data_dict.cxrtrek_data.study_id: missing"):
        cj.parse_study(elements[1], index=1, path=path)
    with pytest.raises(cj.CXRTrekFormatError) as err:
        cj.parse_study(elements[2], index=2, path=path)
    assert "sample 2 (study 'chexpert-mtxray/p1/s3')" in str(err.value)
    assert "content[1].stage: must be an integer, got string 'abc'" in str(err.value)
    assert "content[2].question: must be a string, got null" in str(err.value)
    assert cj.parse_element(elements[3])[1] == (cj.FormatIssue("", "must be a JSON object, got int"),)
    assert cj.parse_element(elements[4])[1][0].field == "data_dict"
    with pytest.raises(cj.CXRTrekFormatError, match=f"{path}: sample 1"):
        cj.read_studies(path)
