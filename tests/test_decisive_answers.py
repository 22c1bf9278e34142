"""Closed answers cut to their decisive part: the first word of a yes/no answer, the letter of a choice."""

import dataclasses

import pytest

from data_pipeline.batches.chain_coverage import format_cut
from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
from data_pipeline.text.decisive_answers import (CutCounts, decisive_answer, decisive_cut, stage3_words,
                                                 uncarried_words, with_decisive_answers)
from data_pipeline.schema.records import Message, QAItem, Study
from data_pipeline.text.sequences import SequenceConfig, build_sequences
from data_pipeline.text.tokenizer import train_tokenizer


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


# The conditional cut: a stage-2 closed answer is cut only when the study's stage-3 turns carry what
# the cut removes. Expected answers written by hand, in the released wording (negated and
# confirmatory questions, format hints, choice forms, long answers with a location).

def _study(*items):
    turns = tuple(QAItem(stage, "t", qtype, 1, question, answer) for stage, qtype, question, answer in items)
    return Study(study_id="s", images=("a.png",), items=turns)


EFFUSION = (2, "yes_no", "Can you confirm the presence of pleural effusion in the X-ray?",
            "Yes. There is a small right pleural effusion at the right costophrenic angle.")
SIDE_ONLY = (3, "captioning", "Could you specify the location of the pleural effusion? Keep it brief and focused:",
             "The pleural effusion is located at the right costophrenic angle.")
SIZE = (3, "single-choice", "How large is the pleural effusion? A. small B. large", "A. small")


@pytest.mark.parametrize("stage3, expected", [
    ((SIDE_ONLY, SIZE), "Yes."),                       # side, place and size all asked at stage 3
    ((SIDE_ONLY,), EFFUSION[3]),                       # the size ("small") is not: kept whole
    ((SIZE,), EFFUSION[3]),                            # the side and place are not
    ((), EFFUSION[3]),                                 # stage 3 asks nothing
])
def test_a_detail_is_cut_only_when_stage_3_carries_it(stage3, expected):
    study = _study(EFFUSION, *stage3)
    cut, counts = decisive_cut(study, stages=(2,), only_if_carried=True)
    assert cut.items[0].answer == expected
    assert counts == CutCounts(cut=int(expected == "Yes."), kept_whole=int(expected != "Yes."))
    assert [i.answer for i in cut.items[1:]] == [i.answer for i in study.items[1:]]  # stage 3 untouched


def test_the_words_stage_3_does_not_carry():
    study = _study(EFFUSION, SIDE_ONLY)
    assert uncarried_words(study.items[0], stage3_words(study.items)) == {"small"}
    assert uncarried_words(study.items[0], stage3_words(study.items[:1])) == {
        "small", "right", "costophrenic", "angle"}  # "pleural effusion" is the question's own


@pytest.mark.parametrize("question, qtype, answer, expected", [
    # an absence restated adds nothing to "No." / "Yes."
    ("Is there any evidence of pneumothorax in the main study X-ray?", "yes_no",
     "No. There is no evidence of pneumothorax on the X-ray.", "No."),
    ("Can you confirm the absence of cardiac enlargement in the X-ray?", "yes_no",
     "Yes. There is no cardiac enlargement seen.", "Yes."),
    ("Pick yes or no: is there cardiomegaly?", "yes_no", "No. The heart is not enlarged.", "No."),
    # a negated question answered "No." with where the finding is: a presence, kept whole
    ("Is the lung free of consolidation?", "yes_no",
     "No. There is consolidation in the left lower lung zone.", "No. There is consolidation in the left lower lung zone."),
    # words that only say a thing is seen, and the question's own words, are not details
    ("Is pleural effusions evident in the X-ray? Answer with yes or no only.", "yes_no",
     "Yes. Pleural effusions are present.", "Yes."),
    # a released Yes/No choice: the option text is the question's; the sentence after it is a detail
    ("Reply to 'Is rib abnormality evident in the X-ray? Mark the most appropriate response: A. No. or B. Yes.' "
     "with just the answer, nothing else.", "single-choice", "B. Yes.", "B."),
    ("Is rib abnormality evident in the X-ray? Only one answer is valid: A. No. or B. Yes.", "single-choice",
     "B. Yes. There is a visible left posterior rib abnormality.",
     "B. Yes. There is a visible left posterior rib abnormality."),
    # a bare answer has nothing to cut: unchanged and not counted
    ("Choose between yes or no: Is cardiomegaly evident in the the heart?", "yes_no", "Yes.", "Yes."),
])
def test_released_wording_without_stage_3(question, qtype, answer, expected):
    cut, counts = decisive_cut(_study((2, qtype, question, answer)), stages=(2,), only_if_carried=True)
    assert cut.items[0].answer == expected
    assert counts == CutCounts(cut=int(expected != answer), kept_whole=int(expected == answer != decisive_answer(
        qtype, answer)))


def test_plurals_and_a_location_asked_in_other_words_are_carried():
    study = _study((2, "yes_no", "Can you spot consolidation in the main study X-ray?",
                    "Yes. Consolidation is seen in both lung bases, with a rib abnormality on the left."),
                   (3, "captioning", "Where is the consolidation? Limit to 20 words maximum.",
                    "Both bases of the lungs."),
                   (3, "captioning", "Provide an analysis of the rib abnormality's location.", "Left posterior rib."))
    assert decisive_cut(study, stages=(2,), only_if_carried=True)[0].items[0].answer == "Yes."


def test_the_unconditional_cut_counts_what_it_loses_and_stage_1_is_left_alone():
    study = _study((1, "yes_no", "<image>\nIs this an AP view?", "No. This is a PA view."), EFFUSION, SIDE_ONLY)
    cut, counts = decisive_cut(study, stages=(2,))
    assert [i.answer for i in cut.items] == ["No. This is a PA view.", "Yes.", SIDE_ONLY[3]]
    assert counts == CutCounts(cut=1, cut_uncarried=1)  # "small" was lost
    kept, counts = decisive_cut(study, stages=(2,), only_if_carried=True)
    assert [i.answer for i in kept.items] == ["No. This is a PA view.", EFFUSION[3], SIDE_ONLY[3]]
    assert counts == CutCounts(kept_whole=1)
    assert with_decisive_answers(study, stages=(2,), only_if_carried=True) == kept


@pytest.fixture(scope="module")
def tok():
    texts = [DEFAULT_SYSTEM_PROMPT, *EFFUSION[2:], *SIDE_ONLY[2:], "Is there a pneumothorax?",
             "No. There is no pneumothorax seen.", "<image>\nView? A. PA B. AP"]
    return train_tokenizer(texts * 10, 400)


def test_kept_answers_reach_the_training_sequence_and_its_counts(tok):
    study = _study((1, "single-choice", "<image>\nView? A. PA B. AP", "A. PA"), EFFUSION,
                   (2, "yes_no", "Is there a pneumothorax?", "No. There is no pneumothorax seen."), SIDE_ONLY)
    config = SequenceConfig(max_length=512, tokens_per_image=4, closed_answers="decisive_if_carried",
                            decisive_stages=(2,))
    (sequence,), stats = build_sequences(study, tok, config)
    text = tok.decode([int(t) for t, m in zip(sequence.target_tokens, sequence.loss_mask) if m > 0],
                      stop_at_end_of_turn=False)
    assert "small right pleural effusion" in text and "no pneumothorax" not in text
    assert (stats.answers_cut, stats.answers_kept_whole, stats.answers_cut_uncarried) == (1, 1, 0)
    line = format_cut(stats, "decisive_if_carried", (2,))
    assert line == "closed-answer cut (stage 2): 1 answers cut, 1 kept whole (detail not carried by stage 3)"
    (_, stats) = build_sequences(study, tok, dataclasses.replace(config, closed_answers="decisive"))
    assert format_cut(stats, "decisive", (2,)) == (
        "closed-answer cut (stage 2): 2 answers cut, 1 of them losing a detail stage 3 does not carry "
        "(closed_answers=decisive_if_carried keeps those whole)")
