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
    baseline = MajorityAnswerBaseline.fit(_view_studies(n_pa=63, n_ap=27), min_count=5, prior_strength=50)
    assert baseline.studies_seen == 90 and baseline.turns_seen == 180 and baseline.turns_unusable == 0
    # The exact question was seen 90 times: its own majority (yes, 63) outweighs 50 pseudo-turns at the
    # group's rates (yes 63 of 180): (63 + 17.5) / 140 = 0.575 yes against (27 + 32.5) / 140 = 0.425 no.
    assert baseline.answer(1, "View_Information", "yes_no", PA_QUESTION) == "Yes."
    # Seen 10 times (7 yes), it does not: (7 + 17.5) / 60 yes against (3 + 32.5) / 60 no.
    few = MajorityAnswerBaseline.fit(_view_studies(n_pa=7, n_ap=3), min_count=5, prior_strength=50)
    assert few.answer(1, "View_Information", "yes_no", PA_QUESTION) == "No."
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
    baseline = MajorityAnswerBaseline.fit(_view_studies(n_pa=63, n_ap=27))
    model = [PredictionRecord("t0", turn, 1, "View_Information", "yes_no", PA_QUESTION, "No.", "No.", context,
                              scores={"correct": True}, num_generated_tokens=2, latency_s=0.1, stop_reason="eos")
             for context in ("own", "teacher", "none") for turn in (0, 1)]
    records = list(baseline_records(model, baseline))
    assert [(r.study_id, r.turn_index, r.context) for r in records] == [("t0", 0, "none"), ("t0", 1, "none")]
    assert all(r.prediction == "Yes." and r.reference == "No." and r.scores == {} and r.latency_s is None
               for r in records)


def _choice_turn(index: int, wording: int, ap_right: bool) -> Study:
    options = ("A. PA B. AP", "A. AP B. PA")[index % 2]
    letter = "A" if options.startswith("A. AP") == ap_right else "B"
    question = f"View question wording {wording}? {options}"
    return _study(index, (1, "View_Information", "single-choice", question, f"{letter}. {'AP' if ap_right else 'PA'}"))


def test_a_few_sightings_of_a_wording_do_not_pull_the_baseline_below_a_constant_answer():
    """Twelve wordings of one single-choice view question, each seen six times, AP right in 58 % of the
    turns whatever the wording (the wording says nothing). Per wording, chance makes PA the majority
    of some wordings (2 or 1 AP of 6); a baseline following them scores below "AP" every time on new
    turns. Held out: the same wordings, AP right in 7 of 12 turns each."""
    ap_per_wording = [4, 2, 5, 3, 4, 2, 4, 5, 3, 4, 2, 4]  # 42 of 72 = 58 % AP; wordings 1, 5, 10 favour PA
    train = [_choice_turn(w * 6 + k, w, k < ap) for w, ap in enumerate(ap_per_wording) for k in range(6)]
    baseline = MajorityAnswerBaseline.fit(train, min_count=5)
    single = parse_qtype("single-choice")
    right = constant_right = total = 0
    for w in range(len(ap_per_wording)):
        for k in range(12):
            turn = _choice_turn(k, w, ap_right=k < 7).items[0]
            reply = baseline.answer(1, "View_Information", "single-choice", turn.question)
            truth = parse_closed_answer(turn.answer, turn.question, single).value
            right += parse_closed_answer(reply, turn.question, single).value == truth
            constant_right += parse_closed_answer("AP", turn.question, single).value == truth
            total += 1
    assert constant_right / total == pytest.approx(7 / 12)
    assert right >= constant_right  # here: equal, it answers "AP" throughout


def test_on_its_training_turns_the_baseline_is_never_below_the_best_constant_of_a_group():
    """Phantom training studies: for every (stage, task type, qtype) group of closed questions, the
    baseline's accuracy on those very turns is at least that of the best single answer value (a
    yes/no word, or one option text given wherever offered), computed here by brute force."""
    from collections import defaultdict

    from data_pipeline.phantom import PhantomConfig, generate_study
    from data_pipeline.text.choice_options import parse_options

    config = PhantomConfig(size=64, turns_per_study=(20, 26), prob_prior=0.6, prob_later=0.3)
    studies = [generate_study(11, i, config)[0] for i in range(150)]
    baseline = MajorityAnswerBaseline.fit(studies)
    groups: dict[tuple, list] = defaultdict(list)
    for study in studies:
        for item in study.items:
            kind = parse_qtype(item.qtype)
            if kind.is_closed and kind.kind != "multi-choice":
                groups[(item.stage, item.task_type, item.qtype)].append((item, kind))
    checked = 0
    for key, turns in groups.items():
        truths = [parse_closed_answer(item.answer, item.question, kind).value for item, kind in turns]
        replies = [baseline.answer(item.stage, item.task_type, item.qtype, item.question) for item, _ in turns]
        ours = sum(parse_closed_answer(r, item.question, kind).value == t
                   for r, (item, kind), t in zip(replies, turns, truths))
        constants = {"Yes.", "No."} | {o.text for item, _ in turns for o in parse_options(item.question)}
        best = max(sum(parse_closed_answer(c, item.question, kind).value == t
                       for (item, kind), t in zip(turns, truths)) for c in constants)
        assert ours >= best, (key, ours, best, len(turns))
        checked += 1
    assert checked >= 10


def _box(x1: float, x2: float, label: str = "opacity") -> str:
    """A one-box detection answer, 10 high: IoUs of two such boxes are their x-overlap over x-union."""
    return f"<|ref|> {label} <|/ref|> <|box|>({x1:.1f}, 0.0), ({x2:.1f}, 10.0)<|/box|>"


# Training references of one detection question, hand-computed mean IoU of each as the constant answer
# (over all five): A [0, 10] twice: (1 + 1 + 0 + 0 + 0) / 5 = 0.40; C [20, 40]: against D [25, 45] and
# E [15, 35] overlap 15 of union 25 each, so (0 + 0 + 1 + 0.6 + 0.6) / 5 = 0.44; D: (0.6 + 1 + 1/3) / 5
# = 0.387; E: the same. The most frequent text (A) is not the best constant box (C).
BOX_A, BOX_C, BOX_D, BOX_E = _box(0, 10), _box(20, 40), _box(25, 45), _box(15, 35)
DETECT = (3, "Findings_Detection", "detection")


def _detection_studies(question: str, answers: list[str], start: int = 0) -> list[Study]:
    return [_study(start + i, (*DETECT, question, a)) for i, a in enumerate(answers)]


def test_detection_answers_the_best_constant_box_not_the_most_frequent_text():
    from cxrtrek_jax.evaluation.metrics.detection_metrics import score_detection
    from cxrtrek_jax.evaluation.scores.answer_baselines import best_constant_box

    references = [BOX_A, BOX_C, BOX_A, BOX_D, BOX_E]
    means = [sum(score_detection(r, c).mean_iou for r in references) / 5 for c in references]
    assert means == pytest.approx([0.40, 0.44, 0.40, (0.6 + 1 + 1 / 3) / 5, (0.6 + 1 + 1 / 3) / 5])
    assert best_constant_box(references) == BOX_C
    baseline = MajorityAnswerBaseline.fit(_detection_studies("Locate the opacity.", references))
    assert baseline.answer(*DETECT, "Locate the opacity.") == BOX_C
    # Boxes with another label score the same (a lone box is matched whatever its label): still C's.
    relabelled = [_box(0, 10, "a"), _box(20, 40, "b"), _box(0, 10, "a"), _box(25, 45, "c"), _box(15, 35, "d")]
    assert best_constant_box(relabelled) == relabelled[1]


def test_detection_samples_the_first_references_of_the_finest_group_seen_enough():
    # Only the first box_sample references count: ten more copies of A after them change nothing,
    # though with them A would be the medoid (12 of 15 exact hits).
    late_a = _detection_studies("Locate the opacity.", [BOX_A, BOX_C, BOX_A, BOX_D, BOX_E] + [BOX_A] * 10)
    assert MajorityAnswerBaseline.fit(late_a, box_sample=5).answer(*DETECT, "Locate the opacity.") == BOX_C
    assert MajorityAnswerBaseline.fit(late_a, box_sample=15).answer(*DETECT, "Locate the opacity.") == BOX_A
    # Two wordings seen min_count times each keep their own medoid; an unseen wording gets the
    # (stage, task, qtype) group's, over all ten references: A [0, 10] x2, C, D, E and F [60, 70] x5.
    # There F scores 5/10 = 0.50 against C's 2.2/10 = 0.22 and A's 0.2.
    studies = (_detection_studies("Locate the opacity.", [BOX_A, BOX_C, BOX_A, BOX_D, BOX_E])
               + _detection_studies("Where is the mass?", [_box(60, 70)] * 5, start=5))
    baseline = MajorityAnswerBaseline.fit(studies, min_count=5)
    assert baseline.answer(*DETECT, "Locate the opacity.") == BOX_C
    assert baseline.answer(*DETECT, "Where is the mass?") == _box(60, 70)
    assert baseline.answer(*DETECT, "Find the lesion.") == _box(60, 70)
    # Seen fewer than min_count times, a wording backs off to the group.
    assert MajorityAnswerBaseline.fit(studies, min_count=6).answer(*DETECT, "Locate the opacity.") == _box(60, 70)
    # A reference without a box is unusable, not a candidate; another task type of the stage gets the
    # (stage, qtype) group's box, an unseen stage nothing.
    broken = MajorityAnswerBaseline.fit(_detection_studies("Locate the opacity.", ["Right lung.", BOX_C]))
    assert broken.turns_unusable == 1 and broken.answer(*DETECT, "Locate the opacity.") == BOX_C
    assert broken.answer(3, "Phrase_Grounding", "detection", "Locate the opacity.") == BOX_C
    assert broken.answer(4, "Relationships_Analysis", "detection", "Locate the opacity.") == ""


def test_detection_samples_are_bounded_and_keep_the_frequent_groups():
    studies = []
    for i in range(60):
        studies += _detection_studies(f"Locate finding number {i}.", [_box(i % 50, i % 50 + 5)], start=2 * i)
        studies += _detection_studies("Locate the opacity.", [BOX_C], start=2 * i + 1)
    baseline = MajorityAnswerBaseline.fit(studies, max_keys=16, box_sample=4)
    assert baseline._boxes.stored <= 16
    assert baseline.answer(*DETECT, "Locate the opacity.") == BOX_C
    with pytest.raises(ValueError, match="box_sample"):
        MajorityAnswerBaseline(box_sample=0)


def test_captions_beside_detection_keep_their_most_frequent_reference():
    studies = [_study(i, (*DETECT, "Locate the opacity.", (BOX_A, BOX_C, BOX_A, BOX_D, BOX_E)[i]),
                      (3, "Attributes_Description", "captioning", "Describe the opacity.",
                       "Small." if i < 3 else "Large."),
                      (3, "Findings_Detection", "captioning", "Describe the box.", "Left." if i else "Right."))
               for i in range(5)]
    baseline = MajorityAnswerBaseline.fit(studies)
    assert baseline.answer(3, "Attributes_Description", "captioning", "Describe the opacity.") == "Small."
    assert baseline.answer(3, "Attributes_Description", "captioning", "Any other wording.") == "Small."
    assert baseline.answer(3, "Findings_Detection", "captioning", "Describe the box.") == "Left."
    assert baseline.answer(*DETECT, "Locate the opacity.") == BOX_C
