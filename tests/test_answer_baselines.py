"""The blind majority-answer baseline: what it learns from training references and how it answers."""

import pytest

from cxrtrek_jax.evaluation.scores.answer_baselines import (
    NORMAL_FINDINGS,
    NORMAL_IMPRESSION,
    MajorityAnswerBaseline,
    baseline_records,
    normal_report,
)
from cxrtrek_jax.evaluation.metrics.answer_parsing import parse_closed_answer
from data_pipeline.reports.chexpert_labeller import default_labeller
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.schema.stages import parse_qtype


def _study(index: int, *items: tuple) -> Study:
    return Study(study_id=f"s{index}", images=("a.png",),
                 items=tuple(QAItem(stage, task, qtype, 1, q, a) for stage, task, qtype, q, a in items))


PA_QUESTION = "Is this a PA view? Current X-ray: <image> ."
PA_REWORDED = "Here is the current image: <image> . Is this a PA view?"


def _view_studies(n_pa: int, n_ap: int) -> list[Study]:
    """Studies asking "Is this a PA view?" (yes on PA studies) and a lateral question (always no)."""
    studies = []
    for i in range(n_pa + n_ap):
        pa = i < n_pa
        studies.append(_study(i, (1, "View_Information", "yes_no", PA_QUESTION, "Yes." if pa else "No. It is AP."),
                              (1, "View_Information", "yes_no", "Is a lateral view included?", "No.")))
    return studies


def test_yes_no_majority_per_question_with_backoff():
    baseline = MajorityAnswerBaseline.fit(_view_studies(n_pa=7, n_ap=3), min_count=5)
    assert baseline.studies_seen == 10 and baseline.turns_seen == 20 and baseline.turns_unusable == 0
    # The exact question was seen 10 times: its own majority (yes) wins over the group's (no, 13 of 20).
    assert baseline.answer(1, "View_Information", "yes_no", PA_QUESTION) == "Yes."
    # The image introduction is not part of the question's identity ...
    assert baseline.answer(1, "View_Information", "yes_no", PA_QUESTION.replace("<image>", "<image> <image>")) == "Yes."
    # ... but other words are: an unseen wording backs off to the (stage, task, qtype) majority.
    assert baseline.answer(1, "View_Information", "yes_no", PA_REWORDED) == "No."
    # Too few sightings of the exact question: the group decides.
    sparse = MajorityAnswerBaseline.fit(_view_studies(n_pa=3, n_ap=0), min_count=5)
    assert sparse.answer(1, "View_Information", "yes_no", PA_QUESTION) == "No."  # 3 yes vs 3 no: tie -> no
    # An unseen stage/qtype: nothing to say.
    assert baseline.answer(2, "Findings_Identification", "yes_no", "Is there a pneumothorax?") == ""


def test_choice_majority_follows_option_text_not_letter():
    studies = []
    for i in range(6):  # PA right in 4 of 6, listed first or second by turns
        options = ("A. PA B. AP", "A. AP B. PA")[i % 2]
        right_text = "PA" if i < 4 else "AP"
        letter = "A" if (options.startswith("A. PA")) == (right_text == "PA") else "B"
        studies.append(_study(i, (1, "View_Information", "single-choice", f"Which view? {options}",
                                  f"{letter}. {right_text}")))
    baseline = MajorityAnswerBaseline.fit(studies)
    for question in ("Which view? A. PA B. AP", "Which view? A. AP B. PA"):
        reply = baseline.answer(1, "View_Information", "single-choice", question)
        parsed = parse_closed_answer(reply, question, parse_qtype("single-choice"))
        assert parsed.value == parse_closed_answer("PA", question, parse_qtype("single-choice")).value, reply


def test_multi_choice_takes_options_right_more_often_than_not():
    question = "Which findings are present? A. nodule B. effusion C. pneumothorax D. none of the above"
    answers = ["A. nodule, B. effusion", "B. effusion", "B. effusion, C. pneumothorax", "A. nodule, B. effusion",
               "D. none of the above"]
    baseline = MajorityAnswerBaseline.fit([_study(i, (2, "Findings_Identification", "multi-choice-4", question, a))
                                           for i, a in enumerate(answers)], min_count=1)
    reply = baseline.answer(2, "Findings_Identification", "multi-choice-4", question)
    # effusion right 4/5 (> 0.5), nodule 2/5, pneumothorax 1/5, none 1/5.
    assert reply == "B. effusion"


def test_open_ended_majority_and_constant_normal_report():
    studies = [_study(i, (1, "Quality_Assessment", "captioning", "Assess the quality.",
                          "Adequate." if i < 3 else "Rotated."),
                       (8, "Report_Generation", "captioning", "Write the report.", f"FINDINGS: nodule {i}."))
               for i in range(5)]
    baseline = MajorityAnswerBaseline.fit(studies)
    assert baseline.answer(1, "Quality_Assessment", "captioning", "Assess it differently.") == "Adequate."
    # Stage 8 is the constant normal report whatever the training reports say, per section asked for.
    assert baseline.answer(8, "Report_Generation", "captioning", "Write the report.") == normal_report("Report_Generation")
    assert normal_report("Report_Generation[Findings]") == NORMAL_FINDINGS
    assert normal_report("Report_Generation[Impression]") == NORMAL_IMPRESSION
    labels = default_labeller().label(normal_report("Report_Generation"))
    positives = {name for name, value in labels.labels.items() if value == 1}
    assert positives == {"No Finding"}, labels.labels


def test_unparseable_references_are_counted_and_empty_training_refused():
    baseline = MajorityAnswerBaseline.fit([_study(0, (1, "View_Information", "yes_no", "Is this PA?", "Perhaps."),
                                                  (1, "View_Information", "yes_no", "Is this PA?", "Yes."))])
    assert baseline.turns_unusable == 1 and baseline.turns_seen == 2
    with pytest.raises(ValueError, match="no question"):
        MajorityAnswerBaseline.fit([Study(study_id="empty")])
    with pytest.raises(ValueError, match="min_count"):
        MajorityAnswerBaseline(min_count=0)


def test_bounded_counting_keeps_the_frequent_answers():
    studies = [_study(i, (1, "View_Information", "yes_no", f"Unique question {i}?", "No."),
                      (1, "View_Information", "yes_no", "Is this PA?", "Yes."))
               for i in range(60)]
    baseline = MajorityAnswerBaseline.fit(studies, max_keys=16)
    assert len(baseline._closed.tables) <= 16
    assert baseline.answer(1, "View_Information", "yes_no", "Is this PA?") == "Yes."


def test_baseline_records_answer_each_turn_once_without_context():
    baseline = MajorityAnswerBaseline.fit(_view_studies(n_pa=7, n_ap=3))
    model = [PredictionRecord("t0", turn, 1, "View_Information", "yes_no", PA_QUESTION, "No.", "No.", context,
                              scores={"correct": True}, num_generated_tokens=2, latency_s=0.1, stop_reason="eos")
             for context in ("own", "teacher", "none") for turn in (0, 1)]
    records = list(baseline_records(model, baseline))
    assert [(r.study_id, r.turn_index, r.context) for r in records] == [("t0", 0, "none"), ("t0", 1, "none")]
    assert all(r.prediction == "Yes." and r.reference == "No." and r.scores == {} and r.latency_s is None
               for r in records)
