"""A data set's question script (`data_pipeline.text.question_wording`), counted from hand-written
studies in a wording that is not the phantom's, written and read back, refused when malformed; and
the turns `cxrtrek infer` asks from it for the images a user gives (`cxrtrek_jax.decoding.data_script`).
Every expected script below is counted by hand from the studies."""

import dataclasses
import json

import pytest

from cxrtrek_jax.decoding.data_script import script_turns
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.text.question_wording import (
    QuestionScript,
    QuestionScriptError,
    ScriptSource,
    ScriptTurn,
    count_question_script,
    read_question_script,
    write_question_script,
)

VIEW = "What is the view of this chest radiograph? A. PA B. AP"
VIEW_INTRO = "{images}\n" + VIEW
PRIOR_INTRO = "Previous image: {images}\nWhat has changed since then?"


def _item(stage, task_type, qtype, images, question):
    return QAItem(stage=stage, task_type=task_type, qtype=qtype, image_input_count=images, question=question,
                  answer="an answer")


def _released_style_studies():
    """Four studies asking in their own words; S2 has two current views and a prior."""
    s1 = Study(study_id="s1", images=("a.png",), items=(
        _item(1, "View_Information", "single-choice", 1, "<image>\n" + VIEW),
        _item(1, "Quality_Assessment", "captioning", 1, "How is the image quality?"),
        _item(2, "Findings_Identification", "yes_no", 1, "Can you confirm the presence of pleural effusion?"),
        _item(8, "Report_Generation", "captioning", 1, "Please write a report for this X-ray."),
    ))
    s2 = Study(study_id="s2", ref_study_id="s2-old", images=("a.png", "b.png", "old.png"), items=(
        _item(1, "View_Information", "single-choice", 2, "<image> <image>\n" + VIEW),
        _item(2, "Findings_Identification", "yes_no", 2, "Can you confirm the presence of cardiomegaly?"),
        _item(2, "Abnormality_Screening", "yes_no", 2, "Is this radiograph abnormal?"),
        _item(1, "Quality_Assessment", "captioning", 2, "Rate the image quality."),
        _item(5, "Differences_Comparison", "captioning", 3, "Previous image: <image>\nWhat has changed since then?"),
        _item(5, "Differences_Comparison", "yes_no", 3, "Is anything new since the previous image?"),
        _item(7, "Diagnosis_Advice", "captioning", 3, "What should be done next?"),
        _item(8, "Report_Generation", "captioning", 3, "Please write a report for this X-ray."),
    ))
    s3 = Study(study_id="s3", images=("a.png",), items=(
        _item(1, "Quality_Assessment", "captioning", 1, "<image>\nHow is the image quality?"),
        _item(2, "Findings_Identification", "yes_no", 1, "Can you confirm the presence of pleural effusion?"),
        _item(8, "Report_Generation", "captioning", 1, "Summarise the findings in a report."),
    ))
    s4 = Study(study_id="s4", images=("a.png",), items=(
        _item(1, "View_Information", "single-choice", 1, "What is the view? Image: <image>"),
        _item(1, "Quality_Assessment", "captioning", 1, "Rate the image quality."),
        _item(2, "Findings_Identification", "yes_no", 1, "Can you confirm the presence of pleural effusion?"),
    ))
    return [s1, s2, s3, s4]


# Counted by hand from `_released_style_studies` (asked / of):
#   current images introduced by 4 first turns: VIEW_INTRO 2 (s1, s2), a Quality one 1 (s3), another view 1 (s4);
#   Quality without images: "Rate ..." 2 (s2, s4), "How is ..." 1 (s1), plus 1 turn with images -> of 4;
#   Findings: effusion 3, cardiomegaly 1; Screening 1 of 1 (after Findings in its study, so after it here);
#   the prior introduced once (s2, stage 5); the stage-5 yes/no 1, of 2 (with the introducing turn);
#   Advice 1 of 1; Report: "Please write ..." 2 of 3.
EXPECTED_TURNS = (
    ScriptTurn(1, "View_Information", "single-choice", "current", VIEW_INTRO, 2, 4),
    ScriptTurn(1, "Quality_Assessment", "captioning", None, "Rate the image quality.", 2, 4),
    ScriptTurn(2, "Findings_Identification", "yes_no", None, "Can you confirm the presence of pleural effusion?", 3, 4),
    ScriptTurn(2, "Abnormality_Screening", "yes_no", None, "Is this radiograph abnormal?", 1, 1),
    ScriptTurn(5, "Differences_Comparison", "captioning", "prior", PRIOR_INTRO, 1, 1),
    ScriptTurn(5, "Differences_Comparison", "yes_no", None, "Is anything new since the previous image?", 1, 2),
    ScriptTurn(7, "Diagnosis_Advice", "captioning", None, "What should be done next?", 1, 1),
    ScriptTurn(8, "Report_Generation", "captioning", None, "Please write a report for this X-ray.", 2, 3),
)


def test_the_script_holds_each_task_types_most_frequent_wording_in_the_datas_order():
    studies = _released_style_studies()
    script = count_question_script(iter(studies), data="released.json", split="train")
    # Five stage-2 yes/no turns, none in the built-in script's words.
    assert script.source == ScriptSource(data="released.json", split="train", studies=4, turns=18,
                                         presence_turns=5, builtin_presence_turns=0)
    assert script.turns == EXPECTED_TURNS
    assert script.left_out == ()


def test_a_wording_inside_its_introduction_is_asked_once_and_a_task_type_with_only_images_is_left_out():
    study = Study(study_id="t1", pos_study_id="t1-next", images=("a.png", "next.png"), items=(
        _item(1, "View_Information", "captioning", 1, "<image>\nDescribe the view."),
        _item(3, "Region_Review", "captioning", 1, "Look again: <image>\nDescribe the effusion."),
        _item(6, "Future_Trend_Analysis", "yes_no", 2, "Later image: <image>\nIs the effusion larger later?"),
        _item(6, "Future_Trend_Analysis", "yes_no", 2, "Is the effusion larger later?"),
    ))
    script = count_question_script([study], data="d", split="train")
    assert script.turns == (
        ScriptTurn(1, "View_Information", "captioning", "current", "{images}\nDescribe the view.", 1, 1),
        ScriptTurn(6, "Future_Trend_Analysis", "yes_no", "later",
                   "Later image: {images}\nIs the effusion larger later?", 1, 1),
    )
    assert script.left_out == ("stage 3 Region_Review: its 1 turn(s) all hold images, and none is the "
                               "introducing turn chosen",)


def test_studies_without_turns_are_refused():
    with pytest.raises(ValueError, match="no turns"):
        count_question_script([Study(study_id="empty")], data="d", split="train")


def _script():
    return QuestionScript(ScriptSource("released.json", "train", 4, 18), EXPECTED_TURNS, ("stage 3 X: left",))


def test_a_written_script_reads_back_the_same(tmp_path):
    path = tmp_path / "question_script.json"
    write_question_script(path, _script())
    assert read_question_script(path) == _script()
    assert json.loads(path.read_text())["source"] == {"data": "released.json", "split": "train", "studies": 4,
                                                      "turns": 18, "presence_turns": 0, "builtin_presence_turns": 0}


def _set(raw, field, value):
    """`raw` with `field` ("turns.1.stage", "left_out") set to `value`, or deleted when `value` is `...`."""
    *parents, last = field.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value


@pytest.mark.parametrize("field, value, named, why", [
    ("format", "cxrtrek-question-script/0", "format", "expected 'cxrtrek-question-script/1'"),
    ("turns.1.stage", 9, "turns[1].stage", "stage must be in 1..8"),
    ("turns.1.qtype", "essay", "turns[1].qtype", "unknown qtype 'essay'"),
    ("turns.1.question", "<image>\nRate it.", "turns[1].question", "and no <image>"),
    ("turns.1.question", "{images} Rate it.", "turns[1].question", "must hold {images} 0 time(s)"),
    ("turns.0.question", VIEW, "turns[0].question", "must hold {images} 1 time(s)"),
    ("turns.4.introduces", "earlier", "turns[4].introduces", "one of current, prior, later"),
    ("turns.4.stage", 6, "turns[4].introduces", "the prior images come in stage 5"),
    ("turns.1.asked", 5, "turns[1].asked", "5 is more than of (4)"),
    ("turns.1.of", 0, "turns[1].of", "must be an integer >= 1"),
    ("turns.2.task_type", ..., "turns[2]", "missing task_type"),
    ("turns.7.stage", 4, "turns[7].stage", "stage 4 after stage 7"),
    ("turns", [], "turns", "non-empty list"),
    ("source.studies", "many", "source.studies", "must be an integer >= 1"),
    ("left_out", ..., "(top level)", "missing left_out"),
])
def test_a_malformed_script_is_refused_naming_the_file_and_field(tmp_path, field, value, named, why):
    path = tmp_path / "question_script.json"
    write_question_script(path, _script())
    raw = json.loads(path.read_text())
    _set(raw, field, value)
    path.write_text(json.dumps(raw))
    with pytest.raises(QuestionScriptError) as caught:
        read_question_script(path)
    assert f"question script {path}: {named}: " in str(caught.value) and why in str(caught.value)


def test_the_current_images_introduction_must_come_first(tmp_path):
    path = tmp_path / "question_script.json"
    swapped = dataclasses.replace(_script(), turns=(EXPECTED_TURNS[1], EXPECTED_TURNS[0], *EXPECTED_TURNS[2:]))
    write_question_script(path, swapped)
    with pytest.raises(QuestionScriptError, match=r"turns\[1\].introduces: the current images come in the first"):
        read_question_script(path)
    path.write_text("{not json")
    with pytest.raises(QuestionScriptError, match=r"\(file\): not JSON"):
        read_question_script(path)


def _asked(turns):
    return [(t.turn_index, t.stage, t.task_type, t.question, t.image_input_count) for t in turns]


def test_the_turns_asked_follow_the_images_given():
    script = _script()
    turns, skipped = script_turns(script, current_images=2)
    assert _asked(turns) == [
        (0, 1, "View_Information", "<image> <image>\n" + VIEW, 2),
        (1, 1, "Quality_Assessment", "Rate the image quality.", 2),
        (2, 2, "Findings_Identification", "Can you confirm the presence of pleural effusion?", 2),
        (3, 2, "Abnormality_Screening", "Is this radiograph abnormal?", 2),
        (4, 7, "Diagnosis_Advice", "What should be done next?", 2),
        (5, 8, "Report_Generation", "Please write a report for this X-ray.", 2),
    ]
    assert skipped == EXPECTED_TURNS[4:6]
    turns, skipped = script_turns(script, current_images=1, prior_images=1, later_images=1)
    assert skipped == ()  # the script has no stage 6
    assert [t.image_input_count for t in turns] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert turns[4].question == "Previous image: <image>\nWhat has changed since then?"
    assert turns[0].question == "<image>\n" + VIEW


def test_a_script_without_introductions_shows_the_images_where_training_puts_them():
    plain = QuestionScript(ScriptSource("d", "train", 1, 3), (
        ScriptTurn(1, "View_Information", "captioning", None, "Which view?", 1, 1),
        ScriptTurn(6, "Future_Trend_Analysis", "yes_no", None, "Worse later?", 1, 1),
        ScriptTurn(8, "Report_Generation", "captioning", None, "Report.", 1, 1),
    ))
    turns, skipped = script_turns(plain, current_images=1, later_images=2)
    assert _asked(turns) == [(0, 1, "View_Information", "Which view?", 1),
                             (1, 6, "Future_Trend_Analysis", "Worse later?", 3),
                             (2, 8, "Report_Generation", "Report.", 3)]
    assert skipped == ()
    with pytest.raises(ValueError, match="at least one current image"):
        script_turns(plain, current_images=0)


def test_data_asking_in_the_built_in_words_is_told_apart_from_other_wording(tmp_path):
    """The phantom asks its stage-2 findings in `PRESENCE_QUESTIONS`' words (an image introduction on
    a few of them aside); the released-style studies above and the released-wording fixture do not."""
    from types import SimpleNamespace

    from cxrtrek_jax.cli.infer_cmd import _question_script
    from data_pipeline.phantom import PhantomConfig, generate_study
    from released_wording import released_wording_studies

    phantom = [generate_study(3, i, PhantomConfig(size=64, turns_per_study=(10, 12)))[0] for i in range(40)]
    source = count_question_script(phantom, data="phantom.json", split="train").source
    assert source.presence_turns > 100 and source.builtin_presence_turns >= 0.9 * source.presence_turns
    assert source.asks_in_builtin_words
    for studies in (_released_style_studies(), released_wording_studies(20, 0)):
        other = count_question_script(studies, data="released.json", split="train").source
        assert other.presence_turns > 0 and other.builtin_presence_turns == 0 and not other.asks_in_builtin_words
    # infer: the built-in script (it follows up each answer) for the phantom's checkpoint, the counted one else.
    for studies, expect_builtin in ((phantom, True), (released_wording_studies(20, 0), False)):
        write_question_script(tmp_path / "question_script.json",
                              count_question_script(studies, data="d.json", split="train"))
        loaded = SimpleNamespace(metadata={"question_script_path": "question_script.json"})
        script, line = _question_script(SimpleNamespace(checkpoint=str(tmp_path)), loaded)
        assert (script is None) == expect_builtin
        assert line.startswith("questions: the built-in script, in the words of this checkpoint's training data"
                               if expect_builtin else "questions: the training data's wording")


def test_a_script_written_before_the_wording_counts_reads_them_as_zero(tmp_path):
    script = count_question_script(_released_style_studies(), data="d.json", split="train")
    path = tmp_path / "question_script.json"
    write_question_script(path, script)
    raw = json.loads(path.read_text())
    del raw["source"]["presence_turns"], raw["source"]["builtin_presence_turns"]
    path.write_text(json.dumps(raw))
    source = read_question_script(path).source
    assert (source.presence_turns, source.builtin_presence_turns, source.asks_in_builtin_words) == (0, 0, False)
    raw["source"]["presence_turns"] = -1
    path.write_text(json.dumps(raw))
    with pytest.raises(QuestionScriptError, match=r"source.presence_turns: must be an integer >= 0, got -1"):
        read_question_script(path)
