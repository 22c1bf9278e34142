"""Closed answers cut to their decisive part: the first word of a yes/no answer, the letter of a choice."""

import pytest

from data_pipeline.text.decisive_answers import decisive_answer, with_decisive_answers
from data_pipeline.schema.records import Message, QAItem, Study


@pytest.mark.parametrize("qtype, answer, expected", [
    ("yes_no", "Yes. The heart is enlarged (cardiothoracic ratio 0.61).", "Yes."),
    ("yes_no", "No.", "No."),
    ("yes_no", "no, there is no effusion", "no."),
    ("yes_no", "Nodular opacity.", "Nodular opacity."),  # "No" must be a whole word
    ("yes_no", "There is a small effusion.", "There is a small effusion."),  # not a yes/no form: kept
    ("single-choice", "B. anteroposterior (AP)", "B."),
    ("single-choice", "C.", "C."),
    ("single-choice", "Both views.", "Both views."),  # no option letter: kept
    ("multi-choice-4", "A. nodule, C. pneumothorax", "A. nodule, C. pneumothorax"),
    ("captioning", "Yes. A long report sentence.", "Yes. A long report sentence."),
    ("detection", "No. <|box|>(1, 2), (3, 4)<|/box|>", "No. <|box|>(1, 2), (3, 4)<|/box|>"),
])
def test_decisive_part_of_each_answer_type(qtype, answer, expected):
    assert decisive_answer(qtype, answer) == expected


def test_a_study_keeps_its_questions_order_and_system_message():
    items = (QAItem(1, "View_Information", "single-choice", 1, "<image>\nView? A. PA B. AP", "B. AP"),
             QAItem(2, "Findings_Identification", "yes_no", 1, "Effusion?", "Yes. Small left effusion."),
             QAItem(8, "Report_Generation", "captioning", 1, "Report.", "Small left effusion."))
    study = Study(study_id="s", images=("a.png",), items=items,
                  messages=(Message("system", "Be brief."),) + tuple(
                      m for i in items for m in (Message("user", i.question), Message("assistant", i.answer))))
    cut = with_decisive_answers(study)
    assert [i.answer for i in cut.items] == ["B.", "Yes.", "Small left effusion."]
    assert [i.question for i in cut.items] == [i.question for i in items]
    assert [m.content for m in cut.messages if m.role == "assistant"] == ["B.", "Yes.", "Small left effusion."]
    assert cut.messages[0] == Message("system", "Be brief.")
    assert study.items[1].answer == "Yes. Small left effusion."  # the input is not modified


def test_the_cut_can_be_limited_to_some_stages():
    items = (QAItem(1, "View_Information", "yes_no", 1, "<image>\nIs this an AP view?", "No. This is a PA view."),
             QAItem(2, "Findings_Identification", "yes_no", 1, "Effusion?", "Yes. Small left effusion."),
             QAItem(2, "Findings_Identification", "single-choice", 1, "Side? A. left B. right", "A. left"))
    study = Study(study_id="s", images=("a.png",), items=items)
    assert [i.answer for i in with_decisive_answers(study, stages=(2,)).items] == [
        "No. This is a PA view.", "Yes.", "A."]
    assert [i.answer for i in with_decisive_answers(study, stages=(1,)).items] == [
        "No.", "Yes. Small left effusion.", "A. left"]
