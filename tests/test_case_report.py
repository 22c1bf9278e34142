"""The HTML case report: selection, context, correctness, boxes, images, escaping and the CLI."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cxrtrek_jax.case_report import CaseReportError, select_cases, write_case_report
from cxrtrek_jax.case_report.image_overlay import (
    MODEL_BOX_COLOR,
    REFERENCE_BOX_COLOR,
    OverlayBox,
    PageImage,
    downscale,
    load_page_image,
    overlay_svg,
)
from cxrtrek_jax.case_report.summary import summarize_all, summarize_stages
from cxrtrek_jax.case_report.report_turns import judge_turn, report_turn
from cxrtrek_jax.cli import main
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, write_predictions
from data_pipeline.schema.boxes import Box
from data_pipeline.files.cxrtrek_json import read_studies, write_studies
from data_pipeline.schema.records import QAItem, Study

VIEW_Q = (
    "<image><image>Which view is this? Select the correct answer from choices below: "
    "A. Posterio-anterior. or B. Antero-posterior."
)
REF_BOX = "<|ref|> right pleural effusion <|/ref|> <|box|>(10.0, 50.0), (40.0, 90.0)<|/box|>"
MODEL_BOX = "<|ref|> right pleural effusion <|/ref|> <|box|>(15.0, 55.0), (45.0, 95.0)<|/box|>"
HOSTILE = '<script>alert("x")</script> & <img src=http://evil.example/a.png>'


def _png(path, height, width, value_fn):
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    Image.fromarray(value_fn(yy, xx).astype(np.uint8)).save(path)


# The studies' identities (records.study_key: source/pat_id/study_id).
S1, S2 = "phantom/p1/s1", "p2/s2"

def _study_s1():
    items = (
        QAItem(1, "View_Information", "single-choice", 2, VIEW_Q, "A. Posterio-anterior."),
        QAItem(2, "Findings_Identification", "yes_no", 2, "Is there a pleural effusion?", "Yes."),
        QAItem(3, "Findings_Detection", "detection", 2, "Locate the pleural effusion.", REF_BOX),
        QAItem(5, "Differences_Comparison", "captioning", 3, "<image>Compare with the prior.", "New effusion."),
        QAItem(8, "Report_Generation", "captioning", 3, "Write the report.", "Right pleural effusion."),
    )
    return Study(
        "s1", pat_id="p1", source="phantom", ref_study_id="s0",
        images=("p1/cur_pa.png", "p1/cur_lat.png", "p1/prior_pa.png"), items=items,
    )


def _study_s2():
    items = (
        QAItem(1, "Quality_Assessment", "yes_no", 1, "<image>Is the image quality adequate?", "Yes."),
        QAItem(8, "Report_Generation", "captioning", 1, "Write the report.", "No acute findings."),
    )
    return Study("s2", pat_id="p2", images=("p2/pa.png",), items=items)


def _rec(study, turn, prediction, context="own", **kw):
    item = study.items[turn]
    return PredictionRecord(
        study_id=study.key, turn_index=turn, stage=item.stage, task_type=item.task_type,
        qtype=item.qtype, question=item.question, reference=item.answer, prediction=prediction,
        context=context, **kw,
    )


def _predictions():
    s1, s2 = _study_s1(), _study_s2()
    return [
        _rec(s1, 0, "B. Antero-posterior."),  # wrong, judged by parsing
        _rec(s1, 1, "No.", scores={"correct": True}),  # the scorer's verdict wins over parsing
        _rec(s1, 2, MODEL_BOX, scores={"iou": 0.4712}),
        _rec(s1, 3, "Effusion is new.", num_generated_tokens=5, latency_s=0.25, stop_reason="eos"),
        _rec(s1, 4, HOSTILE),
        _rec(s1, 0, "A. Posterio-anterior.", context="teacher"),
        _rec(s2, 0, "Yes, adequate."),
        _rec(s2, 1, "No acute cardiopulmonary process."),
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(data json, image root, predictions jsonl) on disk."""
    root = tmp_path_factory.mktemp("case_report")
    images = root / "images"
    _png(images / "p1/cur_pa.png", 64, 80, lambda y, x: 40 + (y * 2 + x) % 180)
    _png(images / "p1/cur_lat.png", 64, 64, lambda y, x: 30 + x * 3)
    _png(images / "p1/prior_pa.png", 64, 80, lambda y, x: 20 + y * 3)
    _png(images / "p2/pa.png", 50, 50, lambda y, x: 10 + (x + y) * 2)
    data = root / "data.json"
    write_studies(data, [_study_s1(), _study_s2()])
    predictions = root / "predictions.jsonl"
    write_predictions(predictions, _predictions())
    return data, images, predictions


@pytest.fixture(scope="module")
def report_html(dataset, tmp_path_factory):
    data, images, _ = dataset
    out = tmp_path_factory.mktemp("out") / "report.html"
    result = write_case_report(_predictions(), read_studies(data), images, out)
    assert result.study_ids == (S1, S2)
    assert result.context == "own"
    assert result.warnings == ()
    return out.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the page


def test_page_is_self_contained(report_html):
    assert report_html.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in report_html
    assert "<script" not in report_html
    # Every src/href is an inline data URI or an in-page anchor.
    for url in re.findall(r'(?:src|href)="([^"]*)"', report_html):
        assert url.startswith(("data:", "#")), url
    assert "url(" not in report_html and "@import" not in report_html
    assert report_html.count('href="data:image/png;base64,') == 4  # 3 images of s1 + 1 of s2


def test_untrusted_text_is_escaped(report_html):
    assert HOSTILE not in report_html
    assert "evil.example" in report_html  # shown as text ...
    assert "<img" not in report_html  # ... never as markup
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img" in report_html


def test_context_shown_and_named(report_html):
    assert "Context shown: <b>own</b>" in report_html
    assert "also in the predictions: teacher" in report_html
    assert "also predicted with context: teacher" in report_html  # s1 has teacher turns too


def test_stages_in_order_with_titles(report_html):
    first, second = report_html.split('<article class="study" id="study-2">')
    headings = re.findall(r"<h3>Stage (\d) · ([^<]+)</h3>", first)
    assert headings == [
        ("1", "image quality and view"),
        ("2", "findings identification"),
        ("3", "finding attributes and localisation"),
        ("5", "comparison with the prior study"),
        ("8", "report generation"),
    ]
    assert re.findall(r"<h3>Stage (\d)", second) == ["1", "8"]


def test_turns_show_question_answer_reference_and_mark(report_html):
    s1 = report_html.split('id="study-1"')[1].split('id="study-2"')[0]
    turns = s1.split('<div class="turn">')[1:]
    assert len(turns) == 5
    assert "✗ incorrect" in turns[0] and "B. Antero-posterior." in turns[0] and "A. Posterio-anterior." in turns[0]
    assert "✓ correct" in turns[1] and "from the scorer" in turns[1]
    assert "mark" not in turns[2] and "scores: iou=0.4712" in turns[2] and "model: 1 box(es)" in turns[2]
    assert "decoding: 5 tokens · 0.25 s · stop: eos" in turns[3]


def test_per_stage_summary_at_top(report_html):
    top = report_html.split('<article class="study"')[0]
    summary = top.split("Per-stage summary")[1]
    rows = re.findall(r"<tr[^>]*><td>(\d?)</td><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td></tr>", summary)
    assert rows == [
        ("1", "image quality and view", "2", "2", "2", "50.0% (1/2)"),
        ("2", "findings identification", "1", "1", "1", "100.0% (1/1)"),
        ("3", "finding attributes and localisation", "1", "0", "0", "—"),
        ("5", "comparison with the prior study", "1", "0", "0", "—"),
        ("8", "report generation", "2", "0", "0", "—"),
        ("", "all stages", "7", "3", "3", "66.7% (2/3)"),
    ]


def test_boxes_drawn_on_first_image_with_legend(report_html):
    s1 = report_html.split('id="study-1"')[1].split('id="study-2"')[0]
    figures = s1.split("<figure>")[1:]
    assert [re.search(r"<figcaption>([^·]+)·", f).group(1).strip() for f in figures] == [
        "current view 1", "current view 2", "prior view 1",
    ]
    rects = re.findall(r'<rect class="box \w+" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"[^>]*stroke="(#\w+)"', figures[0])
    # 80 x 64 image: x = x1/100*80, y = y1/100*64.
    assert sorted(rects) == sorted([
        ("8.0", "32.0", "24.0", "25.6", REFERENCE_BOX_COLOR),
        ("12.0", "35.2", "24.0", "25.6", MODEL_BOX_COLOR),
    ])
    assert re.search(r'<rect class="box reference"[^>]*stroke-dasharray', figures[0])
    assert not re.search(r'<rect class="box model"[^>]*stroke-dasharray', figures[0])
    assert '<title>right pleural effusion (model, turn 2)</title>' in figures[0]
    assert "<rect" not in figures[1] and "<rect" not in figures[2]
    assert "model (solid, label above)" in report_html and "reference (dashed, label below)" in report_html


def test_box_labels_stay_on_the_image_and_are_escaped():
    image = PageImage("data:image/png;base64,AAAA", 200, 100, 200, 100)
    corner = Box("a <b>long</b> label at the corner", 80.0, 0.0, 100.0, 10.0)
    svg = overlay_svg(image, [OverlayBox(corner, "model", 3), OverlayBox(corner, "reference", 3)], description="x<y")
    labels = re.findall(r'<text class="label (\w+)" x="([\d.]+)" y="([\d.]+)" font-size="([\d.]+)"', svg)
    assert len(labels) == 2
    positions = {kind: (float(x), float(y)) for kind, x, y, _ in labels}
    font = float(labels[0][3])
    label_width = 0.58 * font * len(corner.label)
    for x, _ in positions.values():
        assert 2 <= x and x + label_width <= 200.1  # moved left to stay on the image
    assert positions["model"][1] > 0  # no room above the box: inside it
    assert positions["reference"][1] > 10  # below the box
    assert "<b>" not in svg and "a &lt;b&gt;long&lt;/b&gt; label" in svg and 'aria-label="x&lt;y"' in svg


# ----------------------------------------------------------------------------- turns and summaries


def _closed(prediction, reference="Yes.", scores=None):
    return PredictionRecord("s", 0, 2, "Findings_Identification", "yes_no", "Effusion?", reference,
                            prediction, "own", scores or {})


def test_judge_turn_rules():
    assert judge_turn(_closed("Yes, there is.")).correct is True
    assert judge_turn(_closed("No.")).correct is False
    assert judge_turn(_closed("Perhaps.")).correct is False  # unparseable prediction is wrong
    assert judge_turn(_closed("No.", scores={"correct": 1})).correct is True
    assert judge_turn(_closed("Yes.", scores={"correct": False})).basis == "scores"
    unscorable = judge_turn(_closed("Yes.", reference="Hard to say."))
    assert (unscorable.correct, unscorable.basis) == (None, "unscorable")
    open_turn = _rec(_study_s1(), 4, "text")
    assert (judge_turn(open_turn).correct, judge_turn(open_turn).basis) == (None, "open")
    with pytest.raises(CaseReportError, match=r"study 's' turn 0: scores\['correct'\] must be a boolean"):
        judge_turn(_closed("Yes.", scores={"correct": "yes"}))


def test_summaries_count_unscorable_as_closed_but_unscored():
    turns = [report_turn(r) for r in (_closed("Yes."), _closed("No."), _closed("Yes.", reference="Unclear."))]
    (stage,) = summarize_stages(turns)
    assert (stage.stage, stage.turns, stage.closed, stage.scored, stage.correct) == (2, 3, 3, 2, 1)
    assert stage.accuracy == 0.5
    assert summarize_all([stage, stage]).correct == 2


def test_broken_model_boxes_are_reported_not_raised():
    turn = report_turn(_rec(_study_s1(), 2, "<|ref|> effusion <|/ref|> <|box|>(10, 20)<|/box|>"))
    assert turn.model_boxes.boxes == () and "not '(x1, y1), (x2, y2)'" in turn.model_boxes.error
    assert len(turn.reference_boxes.boxes) == 1


# ----------------------------------------------------------------------------- selection and checks


def test_context_choice():
    studies = [_study_s1(), _study_s2()]
    teacher = select_cases(_predictions(), studies, context="teacher")
    assert teacher.context == "teacher"
    assert [c.study_id for c in teacher.cases] == [S1]
    assert [t.record.turn_index for t in teacher.cases[0].turns] == [0]
    assert any("study 'p2/s2' has no predictions with context 'teacher'" in w for w in teacher.warnings)
    only_teacher = [r for r in _predictions() if r.context == "teacher"]
    assert select_cases(only_teacher, studies).context == "teacher"
    with pytest.raises(CaseReportError, match="no predictions with context 'none'; the predictions hold: own, teacher"):
        select_cases(_predictions(), studies, context="none")
    with pytest.raises(CaseReportError, match="no records"):
        select_cases([], studies)


def test_study_selection():
    studies = [_study_s1(), _study_s2()]
    assert [c.study_id for c in select_cases(_predictions(), studies, study_ids=[S2, S1]).cases] == [S2, S1]
    assert [c.study_id for c in select_cases(_predictions(), studies, max_studies=1).cases] == [S1]
    with pytest.raises(CaseReportError, match="no predictions for the requested stud\\(ies\\) 'nope'"):
        select_cases(_predictions(), studies, study_ids=[S1, "nope"])


def test_study_not_in_data_is_an_error_or_a_listed_warning(tmp_path, dataset):
    _, images, _ = dataset
    with pytest.raises(CaseReportError, match="1 predicted stud\\(ies\\) not in the data: 'p2/s2'"):
        select_cases(_predictions(), [_study_s1()])
    out = tmp_path / "r.html"
    result = write_case_report(_predictions(), [_study_s1()], images, out, allow_missing=True)
    assert result.study_ids == (S1, S2)
    assert result.warnings == ("1 predicted stud(ies) not in the data: 'p2/s2'; shown without images",)
    page = out.read_text(encoding="utf-8")
    assert "shown without images" in page and "not in the data: no images" in page


@pytest.mark.parametrize(
    "bad, message",
    [
        (_rec(_study_s1(), 1, "again"), "study 'phantom/p1/s1' turn 1 \\(context 'own'\\) appears more than once"),
        (_rec(_study_s1(), 4, "x").replace(turn_index=9), "study 'phantom/p1/s1' turn 9 .*has only 5 turn"),
        (_rec(_study_s1(), 4, "x").replace(stage=7), "study 'phantom/p1/s1' turn 4 .*stage 7 in the predictions, 8 in the data"),
    ],
)
def test_predictions_that_do_not_match_the_data(bad, message):
    records = [r for r in _predictions() if r.turn_index != 4] + [bad]
    with pytest.raises(CaseReportError, match=message):
        select_cases(records, [_study_s1(), _study_s2()])


def test_duplicate_study_in_data():
    with pytest.raises(CaseReportError, match="data: study 'phantom/p1/s1' appears more than once"):
        select_cases(_predictions(), [_study_s1(), _study_s2(), _study_s1()])


# ----------------------------------------------------------------------------- images


def test_dicom_is_downscaled_for_the_page():
    from pydicom.data import get_testdata_file

    page = load_page_image(get_testdata_file("RG1_UNCR.dcm"), max_side=512)
    assert (page.source_height, page.source_width) == (1955, 1841)
    assert (page.height, page.width) == (512, round(1841 * 512 / 1955))
    png = Image.open(io.BytesIO(base64.b64decode(page.data_uri.split(",", 1)[1])))
    assert (png.mode, png.size) == ("L", (page.width, page.height))
    assert np.asarray(png).std() > 10  # a real radiograph, not a blank


def test_downscale_keeps_small_images_and_aspect():
    small = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(downscale(small, 512), small)
    assert downscale(np.random.default_rng(0).random((300, 100)), 60).shape == (60, 20)
    with pytest.raises(ValueError, match="max_side"):
        downscale(small, 0)


def test_unloadable_image_is_an_error_or_a_listed_warning(tmp_path, dataset):
    data, images, _ = dataset
    broken = _study_s2().replace(images=("p2/missing.png",))
    predictions = [r for r in _predictions() if r.study_id == S2]
    with pytest.raises(CaseReportError, match="study 'p2/s2' image 0 \\(p2/missing.png\\): .*file not found"):
        write_case_report(predictions, [broken], images, tmp_path / "r.html")
    result = write_case_report(predictions, [broken], images, tmp_path / "r.html", allow_missing=True)
    assert len(result.warnings) == 1 and "p2/missing.png" in result.warnings[0]
    assert "image not available" in (tmp_path / "r.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- CLI


def test_cli_report(tmp_path, dataset, capsys):
    data, images, predictions = dataset
    out = tmp_path / "cli.html"
    argv = ["report", "--predictions", str(predictions), "--data", str(data), "--image-root", str(images),
            "--out", str(out), "--study", S2, "--context", "own"]
    assert main(argv) == 0
    assert "1 stud(ies), context 'own', 0 warning(s)" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert f"Study {S2}" in page and f"Study {S1}" not in page


def test_cli_errors_name_the_problem(tmp_path, dataset, capsys):
    data, images, predictions = dataset
    base = ["report", "--predictions", str(predictions), "--out", str(tmp_path / "x.html")]
    only_s1 = tmp_path / "only_s1.json"
    write_studies(only_s1, [_study_s1()])
    assert main([*base, "--data", str(only_s1), "--image-root", str(images)]) == 2
    assert "not in the data: 'p2/s2'" in capsys.readouterr().err
    # The image root defaults to the data file's folder, where the images are not.
    assert main([*base, "--data", str(data)]) == 2
    assert "study 'phantom/p1/s1' image 0 (p1/cur_pa.png)" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "absent.json")]) == 2
    assert "--data" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def test_cli_on_a_phantom_dataset(tmp_path, capsys):
    """Released-form data with images next to the JSON (the default image root);
    predictions equal to the references are all marked correct."""
    from data_pipeline.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "phantom", 2, seed=3)
    studies = read_studies(data)
    records = [
        PredictionRecord(s.key, t, it.stage, it.task_type, it.qtype, it.question, it.answer, it.answer, "teacher")
        for s in studies
        for t, it in enumerate(s.items)
    ]
    write_predictions(tmp_path / "p.jsonl", records)
    out = tmp_path / "phantom.html"
    assert main(["report", "--predictions", str(tmp_path / "p.jsonl"), "--data", str(data), "--out", str(out)]) == 0
    assert "context 'teacher'" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert page.count('href="data:image/png;base64,') == sum(s.num_images for s in studies)
    assert "✗ incorrect" not in page and "not parseable" not in page
    assert page.count("✓ correct") == sum(it.qtype_parsed.is_closed for s in studies for it in s.items)
