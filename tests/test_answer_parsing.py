"""Closed-ended answer parsing: options from question texts, keys, option texts, paraphrases, yes/no."""

import pytest

from cxrtrek_jax.evaluation.metrics.answer_parsing import (
    ChoiceOption,
    judge_closed_answer,
    parse_closed_answer,
    parse_options,
    parse_yes_no,
)
from data_pipeline.schema.stages import parse_qtype

SINGLE = parse_qtype("single-choice")
YES_NO = parse_qtype("yes_no")
MULTI = parse_qtype("multi-choice-4")

# Question styles of the released data (the first five are verbatim released questions).
VIEW_Q = (
    "View(s) Of X-ray: ______ Select the correct answer from choices below: A. Posterio-anterior X-ray(s). "
    "or B. Antero-posterior. Respond to question with the answer only, no explanation."
)
QUOTED_Q = (
    "Reply to 'Can you confirm if any foreign bodies are present in the X-ray image? The correct option is: "
    "A. No. or B. Yes.' with just the answer, nothing else."
)
NUMBERED_Q = (
    "Reply to 'Can you provide a precise anatomical description of where pleural effusion is located? Identify "
    "the correct choice: [ 1. Pulmonary parenchyma; 2. Left pleural space. or 3. Mediastinal space. ].' with "
    "just the answer, nothing else."
)
UNLABELLED_Q = (
    "Can you determine if low lung volumes is in the bilateral lung fields? "
    "Identify the correct choice: [ No. or Yes. ]."
)
SENTENCE_Q = (
    "Pick the description that best fits the opacification in the X-ray image. The correct option is: [ The "
    "opacification is described as retrocardiac and diffuse with a reticular pattern. or Bilateral basilar "
    "opacities with slight increase in right midlung groundglass opacities. ]. Answer the question directly."
)
INLINE_Q = "Which view is this? A. PA B. AP C. Lateral"
LINES_Q = "Which findings are present?\nA) Pleural effusion\nB) Pneumothorax\nC) Cardiomegaly\n(D) Edema"


@pytest.mark.parametrize(
    "question, expected",
    [
        (VIEW_Q, [("A", "Posterio-anterior X-ray(s)."), ("B", "Antero-posterior.")]),
        (QUOTED_Q, [("A", "No."), ("B", "Yes.")]),
        (NUMBERED_Q, [("1", "Pulmonary parenchyma"), ("2", "Left pleural space."), ("3", "Mediastinal space.")]),
        (UNLABELLED_Q, [(None, "No."), (None, "Yes.")]),
        (INLINE_Q, [("A", "PA"), ("B", "AP"), ("C", "Lateral")]),
        (LINES_Q, [("A", "Pleural effusion"), ("B", "Pneumothorax"), ("C", "Cardiomegaly"), ("D", "Edema")]),
    ],
)
def test_parse_options_styles(question, expected):
    assert parse_options(question) == tuple(ChoiceOption(k, t) for k, t in expected)


def test_parse_options_sentences_and_none():
    options = parse_options(SENTENCE_Q)
    assert [o.key for o in options] == [None, None]
    assert options[1].text.startswith("Bilateral basilar opacities")
    assert parse_options("Is there any evidence of consolidation in the main study X-ray?") == ()
    # A lone "A." is not a list of options, and letters must count up from A.
    assert parse_options("Vitamin B. deficiency? C. D.") == ()


@pytest.mark.parametrize("answer", ["B", "B.", "B. Antero-posterior.", "(B)", "B)", "Answer: B", "The answer is B",
                                    "Antero-posterior", "antero-posterior view", "B Antero-posterior"])
def test_single_choice_forms_agree(answer):
    parsed = parse_closed_answer(answer, VIEW_Q, SINGLE)
    assert parsed.value == frozenset({"opt:1"}), answer


def test_single_choice_methods_and_failures():
    assert parse_closed_answer("B.", VIEW_Q, SINGLE).method == "key"
    assert parse_closed_answer("Antero-posterior.", VIEW_Q, SINGLE).method == "text"
    # An article "A" is not option A; a text naming no option is unparseable.
    assert not parse_closed_answer("A pleural effusion is present.", QUOTED_Q, SINGLE).ok
    assert not parse_closed_answer("", VIEW_Q, SINGLE).ok
    assert parse_closed_answer("E.", INLINE_Q, SINGLE).method == "unparseable"


def test_numbered_and_unlabelled_options():
    assert parse_closed_answer("2. Left pleural space.", NUMBERED_Q, SINGLE).value == frozenset({"opt:1"})
    assert parse_closed_answer("Left pleural space", NUMBERED_Q, SINGLE).value == frozenset({"opt:1"})
    long_answer = "Yes. Low lung volumes on a chest X-ray typically affect both lungs."
    assert parse_closed_answer(long_answer, UNLABELLED_Q, SINGLE).value == frozenset({"opt:1"})


def test_paraphrase_matches_closest_option():
    paraphrase = "The opacification is observed as retrocardiac and diffuse with a reticular pattern."
    parsed = parse_closed_answer(paraphrase, SENTENCE_Q, SINGLE)
    assert parsed.value == frozenset({"opt:0"}) and parsed.method == "fuzzy"
    assert not parse_closed_answer("The heart is enlarged.", SENTENCE_Q, SINGLE).ok


def test_yes_no_with_and_without_options():
    assert parse_yes_no("Yes. There is evidence of consolidation.") is True
    assert parse_yes_no("no, none seen") is False
    assert parse_yes_no("There is no effusion.") is None
    assert parse_yes_no("Nodular opacity.") is None
    plain = "Is cardiomegaly present in the main study X-ray?"
    assert parse_closed_answer("Yes, mild.", plain, YES_NO).value == frozenset({"yes"})
    assert parse_closed_answer("No. Not present.", plain, YES_NO).value == frozenset({"no"})
    assert not parse_closed_answer("Cardiomegaly is present.", plain, YES_NO).ok
    # With listed yes/no options, "B." and "Yes." name the same option.
    assert parse_closed_answer("B.", QUOTED_Q, YES_NO).value == parse_closed_answer("Yes.", QUOTED_Q, YES_NO).value


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("A, C", {0, 2}),
        ("A and C", {0, 2}),
        ("A; C; D", {0, 2, 3}),
        ("A. Pleural effusion, C. Cardiomegaly", {0, 2}),
        ("Pleural effusion and cardiomegaly.", {0, 2}),
        ("B", {1}),
    ],
)
def test_multi_choice_sets(answer, expected):
    parsed = parse_closed_answer(answer, LINES_Q, MULTI)
    assert parsed.value == frozenset(f"opt:{i}" for i in expected)


def test_multi_choice_unparseable_and_open_qtype_rejected():
    assert not parse_closed_answer("No acute findings.", LINES_Q, MULTI).ok
    with pytest.raises(ValueError, match="not closed-ended"):
        parse_closed_answer("x", "q", parse_qtype("captioning"))


@pytest.mark.parametrize(
    "prediction, reference, question, qtype, correct",
    [
        ("B.", "Antero-posterior.", VIEW_Q, SINGLE, True),  # key and option text name the same option
        ("A", "B. Antero-posterior.", VIEW_Q, SINGLE, False),
        ("I cannot tell.", "B.", VIEW_Q, SINGLE, False),  # an unparseable prediction is wrong
        ("Yes. A small one.", "yes", "Is there an effusion?", YES_NO, True),
        ("No.", "Yes.", "Is there an effusion?", YES_NO, False),
        ("B", "Perhaps.", "Is there an effusion?", YES_NO, None),  # reference unparseable: not scorable
    ],
)
def test_judge_closed_answer(prediction, reference, question, qtype, correct):
    judged = judge_closed_answer(prediction, reference, question, qtype)
    assert judged.correct is correct
    assert judged.reference == parse_closed_answer(reference, question, qtype)


# An image introduction after the options (the phantom's "{question} Current X-ray: {images} ." layout,
# and the authors' introductions) is not part of the last option.
TRAILING_IMAGE_QUESTIONS = [
    ("Which view is this? Options: A. PA B. AP Current X-ray: <image> .", ["PA", "AP"]),
    ("Which projection was used? A. PA B. AP The previous study is shown here: <image> .", ["PA", "AP"]),
    ("How has the effusion changed? A. resolved B. stable C. worsened Later X-ray: <image> <image> .",
     ["resolved", "stable", "worsened"]),
    ("Where is the opacity? A. RLL B. LLL Here is the current X-ray image: <image> .", ["RLL", "LLL"]),
    ("Where is it? Options: A. Right lower lobe B. Left upper lobe Reference X-ray: <image> .",
     ["Right lower lobe", "Left upper lobe"]),
    ("Is it AP? Mark the most appropriate response: A. No. or B. Yes. Current X-ray: <image> . The reference "
     "X-ray image of the patient is shown below: <image> .", ["No.", "Yes."]),
    ("Is it AP? A. No. or B. Yes. <image>", ["No.", "Yes."]),
]


@pytest.mark.parametrize("question, texts", TRAILING_IMAGE_QUESTIONS)
def test_the_last_option_ends_before_an_image_introduction(question, texts):
    assert [o.text for o in parse_options(question)] == texts


def test_a_right_free_text_answer_to_a_question_with_a_trailing_image_is_scored_right():
    question = "Which view is this? Options: A. PA B. AP Current X-ray: <image> ."
    assert judge_closed_answer("AP", "B. AP", question, SINGLE).correct is True
    assert judge_closed_answer("AP", "A. PA", question, SINGLE).correct is False
    assert parse_closed_answer("AP", question, SINGLE).method == "text"


def test_parsed_options_are_the_phantoms_own_option_lists():
    """The phantom keeps each choice question's lettered options (`option_list`): the parser must find
    exactly those in the question text, whatever introduction the phantom put around them."""
    from data_pipeline.phantom import PhantomConfig, generate_study

    config = PhantomConfig(size=64, turns_per_study=(20, 26), prob_prior=0.8, prob_later=0.5)
    checked = trailing = 0
    for index in range(120):
        study, _ = generate_study(7, index, config)
        for item in study.items:
            listed = item.extras.get("option_list")
            if not listed:
                continue
            expected = [entry.split(". ", 1)[1] for entry in listed]
            # A sentence's closing period may stay on the last option ("... D. x. Answer with ..."):
            # scoring compares words, so it is not part of the comparison.
            assert [o.text.rstrip(".") for o in parse_options(item.question)] == expected, item.question
            checked += 1
            trailing += item.question.rstrip().endswith("<image> .")
    assert checked > 200 and trailing > 5  # the layout of the issue is among them


# Verbatim from the CXRTrek public sample (guanjinquan/CXRTrekReasoner, dataset/train_swift_demo.json):
# options without brackets or letters after a colon, and a quoted question closed by "'," before the
# wrapper's instruction.
SAMPLE_FORMS = [
    ("Can you confirm the presence of retrocardiac opacity in the X-ray? The correct option is: Yes. or No. "
     "Respond to question with the answer only, no explanation.", ["Yes.", "No."]),
    ("Provide the answer to 'Is tubes detectable in the X-ray? The correct option is: Yes. or No.' only, do not "
     "elaborate.", ["Yes.", "No."]),
    ("Reply to 'Can you detect a support devices in the X-ray? Applicable choices include: Yes. or No.' with just "
     "the answer, nothing else.", ["Yes.", "No."]),
    ("Respond to this question: 'Is mass visible in this X-ray? Which of the following statements is accurate? "
     "A. No. or B. Yes.', write only the answer.", ["No.", "Yes."]),
    ("What is the positional information of clips? Only one answer is valid: A. Left iliac fossa. or B. Right "
     "axilla.', write only the answer.", ["Left iliac fossa.", "Right axilla."]),
]


@pytest.mark.parametrize("question, texts", SAMPLE_FORMS)
def test_released_forms_without_brackets_and_with_a_closing_quote(question, texts):
    assert [o.text for o in parse_options(question)] == texts


def test_a_yes_no_question_with_a_colon_lists_no_options():
    for question in ("Choose between yes or no: Is cardiomegaly evident in the the heart?",
                     "Pick yes or no: Given the indication: 48 years Female, Central line placement. Can you "
                     "confirm if surgical clips is located in right axilla?"):
        assert parse_options(question) == ()
