"""Finding labels from a study's stage-2 answers.

The reading of one closed turn is checked on a table of questions and answers in the release's
wording, each expected label written by hand; quoted strings marked (sample) are verbatim from the
CXRTrek public sample (guanjinquan/CXRTrekReasoner dataset/train_swift_demo.json), the others are
written in its style. Study-level labels are checked on hand-made turns, on phantom studies against
the phantom's own ground truth, and on the released-wording fixture (`tests/released_wording.py`)
against the truth it was worded from; the console count line on hand-counted studies.
"""

import numpy as np
import pytest

from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.reports.chexpert_labeller import RULES_DIR, labeller_tokens
from data_pipeline.schema.findings import CHEXPERT_LABELS, FINDING_KINDS
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.text.image_labels import (
    IMAGE_LABEL_KINDS,
    WHOLE_KIND_MENTIONS,
    format_image_label_counts,
    image_label_counts,
    presence_answers,
    study_image_labels,
    turn_labels,
)
from released_wording import finding_truth, released_wording_studies

YN = "yes_no"
ABSENT, PRESENT = False, True

# (question, qtype, answer, expected {kind: present}); {} = no label.
TURNS = [
    # The five: negation flips the answer; a hydropneumothorax is a pneumothorax by the
    # labeller's rules, but its "No." says nothing of every pneumothorax; hedged and "evidence of" questions
    # are read; the released single-choice form is read.
    ("Is the lung free of consolidation?", YN, "Yes.", {"consolidation": ABSENT}),
    ("Is the lung free of consolidation?", YN, "No.", {"consolidation": PRESENT}),
    ("Can you confirm the absence of pneumothorax?", YN, "Yes.", {"pneumothorax": ABSENT}),
    ("Can you confirm the absence of pneumothorax?", YN, "No.", {"pneumothorax": PRESENT}),
    ("Is there a hydropneumothorax?", YN, "Yes.", {"pneumothorax": PRESENT}),
    ("Is there a hydropneumothorax?", YN, "No.", {}),
    ("Are the signs pointing towards a possible consolidation?", YN,
     "Yes. There are findings consistent with consolidation at the lung bases.", {"consolidation": PRESENT}),
    ("Are the signs pointing towards a possible opacities?", YN,  # (sample) opacity is none of the six kinds
     "Yes. There are visible patchy opacities in the lower parts of both lungs.", {}),
    ("Is there any evidence of effusion in the X-ray image? Which of the following statements is accurate? "
     "A. No. or B. Yes.", "multi-choice-2", "B. Yes.", {"pleural_effusion": PRESENT}),  # (sample)
    ("Reply to 'Does this X-ray show evidence of pleural effusion? Mark the most appropriate response: A. No. or "
     "B. Yes.' with just the answer, nothing else.", "single-choice", "B. Yes.", {"pleural_effusion": PRESENT}),
    ("Reply to 'Does this X-ray show evidence of pleural effusion? Mark the most appropriate response: A. No. or "
     "B. Yes.' with just the answer, nothing else.", "single-choice", "A. No.", {"pleural_effusion": ABSENT}),
    # Plain released yes/no wordings (sample).
    ("Can you ascertain whether consolidation is present in the X-ray?", YN,
     "Yes. Consolidation is present in the left lower lobe.", {"consolidation": PRESENT}),
    ("Is pleural effusions evident in the X-ray?", YN, "Yes. There are mild to moderate pleural effusions present.",
     {"pleural_effusion": PRESENT}),
    ("Any pleural effusion are found in X-ray(s)?", YN, "No. No pleural effusion is present on the X-ray.",
     {"pleural_effusion": ABSENT}),
    ("Is there a possibility of pleural effusion in the chest X-ray?", YN,
     "No. There is no evidence of pleural effusion.", {"pleural_effusion": ABSENT}),
    ("Choose between yes or no: Is cardiomegaly evident in the the heart?", YN, "Yes.", {"cardiomegaly": PRESENT}),
    ("Answer the question with only yes or no: Is there any indication of et tube in the X-ray? Current X-ray: "
     "<image> . The reference X-ray image of the patient is shown below: <image> .", YN, "Yes.",
     {"support_devices": PRESENT}),
    ("Is pigtail catheter evident in the X-ray? Could you break that down for me?", YN,
     "Yes. On review of the current chest X-ray study, I observe the presence of a pigtail catheter in the right "
     "chest.", {"support_devices": PRESENT}),
    ("Pick yes or no: is there a focal consolidation?", YN, "No. There is no consolidation.",
     {"consolidation": ABSENT}),
    ("Is there any evidence of pneumothorax here?", YN, "Yes, small apical.", {"pneumothorax": PRESENT}),
    # Yes/No options in every released layout, answered by key, text or both.
    ("Give only the answer to: Is pneumothorax visible in this X-ray? Check every valid option: A. No.\nB. Yes.",
     "multi-choice-2", "A. No.", {"pneumothorax": ABSENT}),
    ("Give only the answer to: Is atelectasis visible in this X-ray? Check every valid option: A. No.\nB. Yes.",
     "multi-choice-2", "B. Yes.", {}),  # (sample) atelectasis is none of the six kinds
    ("Can you detect a picc line in the X-ray? Select the correct answer from the options below: [ A. No. or "
     "B. Yes. ]. Respond to question with the answer only, no explanation.", "single-choice", "B. Yes.",
     {"support_devices": PRESENT}),  # (sample)
    ("Can you detect a picc line in the X-ray? Select the correct answer from the options below: [ A. No. or "
     "B. Yes. ]. Respond to question with the answer only, no explanation.", "single-choice", "A. No.", {}),
    ("Only provide the answer for: Is pneumothorax evident in the X-ray? The correct option is: A. Yes. or B. No.",
     "multi-choice-2", "B. No.", {"pneumothorax": ABSENT}),
    ("Can you spot consolidation in the main study X-ray? More or one answer applies. Select accordingly: [ 1. Yes. "
     "or 2. No. ]. Without any explaination, just output your answer.", "multi-choice-2", "1. Yes.",
     {"consolidation": PRESENT}),
    ("Please only output the answer for the question: Can you detect a mediport in the X-ray? Only one answer is "
     "valid: [ Yes. or No. ].", "single-choice", "Yes.", {"support_devices": PRESENT}),  # (sample)
    ("Reply to 'Is there any evidence of pneumothorax in the main study X-ray? Select the correct answer from "
     "choices below: A. No;\nB. Yes.' with just the answer, nothing else.", "single-choice", "A. No.",
     {"pneumothorax": ABSENT}),  # (sample)
    ("Does the X-ray image confirm the presence of pneumothorax? Choose the best answer to complete the statement. "
     "[ A. No. or B. Yes. ]. Without any explaination, just output your answer.", "single-choice", "A.",
     {"pneumothorax": ABSENT}),
    ("Does the X-ray image confirm the presence of pneumothorax? Choose the best answer to complete the statement. "
     "[ A. No. or B. Yes. ]. Without any explaination, just output your answer.", "single-choice", "B. No.", {}),
    ("Does the X-ray image confirm the presence of pneumothorax? Choose the best answer to complete the statement. "
     "[ A. No. or B. Yes. ]. Without any explaination, just output your answer.", "single-choice", "C.", {}),
    ("Is this X-ray normal? The correct option is: [ Yes. or No. ]. Without any explaination, just output your "
     "answer.", "single-choice", "No.", {}),  # (sample) no finding named
    # Several kinds: "No." denies each, "Yes." says none for sure.
    ("Is there any evidence of pleural effusion or pneumothorax?", YN, "No.",
     {"pleural_effusion": ABSENT, "pneumothorax": ABSENT}),
    ("Is there any evidence of pleural effusion or pneumothorax?", YN, "Yes.", {}),
    ("Is the lung free of effusion and pneumothorax?", YN, "Yes.",
     {"pleural_effusion": ABSENT, "pneumothorax": ABSENT}),
    ("Is the lung free of effusion and pneumothorax?", YN, "No.", {}),
    ("Can you confirm the absence of tubes, lines, or treatment devices in the X-ray?", YN, "No.",
     {"support_devices": PRESENT}),
    # A narrowed question: its "Yes." holds, its "No." denies only the narrowing.
    ("Is there any evidence of medical equipment or devices in the bilateral lower lung fields?", YN,
     "No. No foreign bodies found in bilateral lower lung fields.", {}),  # (sample)
    ("Is there any indication of pleural effusion in the left pleura?", YN,
     "Yes. There is evidence of a small left pleural effusion.", {"pleural_effusion": PRESENT}),  # (sample)
    ("Are there any foreign bodies such as medical devices or tubes in the the heart?", YN,
     "No. No foreign bodies found in the heart.", {}),  # (sample)
    ("Is there a large pleural effusion?", YN, "No.", {}),
    ("Reference X-ray image is shown below: <image> . Is the endotracheal tube correctly positioned in the X-ray "
     "image?", YN, "Yes. The endotracheal tube is visible in the X-ray image, with its tip located 7 cm from the "
     "nipple, indicating proper placement.", {"support_devices": PRESENT}),  # (sample)
    ("Is the tube correctly positioned?", YN, "No.", {}),
    ("Is there any malignancy identified in the X-ray?", YN,
     "No. There is no evidence of malignancy identified in the imaging findings.", {}),  # (sample)
    ("Is there any mass detected in the X-ray?", YN, "Yes. A mass is present in the right upper lobe.",
     {"nodule": PRESENT}),  # (sample)
    # The answer's first sentence contradicts or hedges: unknown.
    ("Can you verify if tubes is present in the X-ray?", YN,
     "Yes. There is no observe of x-ray tubes in the findings.", {}),  # (sample)
    ("Is there any evidence of pleural effusion in the main study X-ray?", YN, "Yes. Possible small effusion.", {}),
    ("Is consolidation evident in the X-ray?", YN, "No. The findings suggest possible atelectasis or consolidation, "
     "but consolidation is not definitively demonstrated.", {}),  # (sample)
    # Not a question about a named finding's presence.
    ("Are there any collateral imaging findings distinct from pleural effusion and nodular opacification in the "
     "X-ray?", YN, "Yes. Hydropneumothorax are present.", {}),  # (sample)
    ("Answer the question with only yes or no: Can other diagnostic markers be observed besides consolidation, "
     "atelectasis, opacity and enlargement of the cardiac silhouette in this radiograph?", YN, "No.", {}),  # (sample)
    ("What other radiodense anomalies are present in the image apart from consolidation and atelectasis?", YN,
     "Yes. Pleural effusion and opacities are present.", {}),  # (sample)
    ("Heavy smoking history, evaluation for lung masses. Are there any findings that suggest an abnormal condition? "
     "Respond with yes or no only.", YN, "Yes.", {}),  # (sample)
    ("Is the heart size normal?", YN, "No.", {}),
    ("Is there a pneumothorax?", "captioning", "Yes.", {}),
    ("Is there a lung nodule?", YN, "Possibly.", {}),
]


@pytest.mark.parametrize("question, qtype, answer, expected", TURNS, ids=[f"turn{i}" for i in range(len(TURNS))])
def test_one_turn_is_read_as_a_reader_would(question, qtype, answer, expected):
    assert turn_labels(question, qtype, answer) == expected


def test_the_table_is_large_and_holds_every_form():
    assert len(TURNS) >= 40
    labelled = [expected for *_, expected in TURNS if expected]
    assert {kind for expected in labelled for kind in expected} == set(FINDING_KINDS)
    assert {present for expected in labelled for present in expected.values()} == {True, False}


def test_whole_kind_mentions_are_the_labellers_own_phrases():
    import json

    rules = json.loads((RULES_DIR / "observations.json").read_text())["observations"]
    for kind, phrases in WHOLE_KIND_MENTIONS.items():
        known = {" ".join(labeller_tokens(p.replace("...", " "))) for p in rules[CHEXPERT_LABELS[kind]]["mentions"]}
        for phrase in phrases:
            assert " ".join(labeller_tokens(phrase.replace("...", " "))) in known, (kind, phrase)


def _turn(stage, question, answer, qtype="yes_no"):
    return QAItem(stage=stage, task_type="Findings_Identification", qtype=qtype, image_input_count=1,
                  question=question, answer=answer)


def test_a_study_takes_the_labels_its_stage_two_agrees_on():
    study = Study(study_id="s", images=("a.png",), items=(
        _turn(1, "<image>\nIs there cardiomegaly?", "Yes."),                    # stage 1: not a label
        _turn(2, "  IS THE HEART ENLARGED? ", "No. The heart is normal."),
        _turn(2, "Is there any evidence of pneumothorax here?", "Yes, small apical."),
        _turn(2, "Is there a pleural effusion or a lung nodule?", "No."),          # two findings, both denied
        _turn(2, "Is there any consolidation?", "Yes."),
        _turn(2, "Does this X-ray show an area of consolidation?", "No."),        # contradicts: unknown
        _turn(2, "Are there any support devices?", "Two tubes.", "captioning"),  # not closed
    ))
    expected = {"cardiomegaly": False, "pneumothorax": True, "pleural_effusion": False, "nodule": False}
    assert presence_answers(study) == expected
    labels, known = study_image_labels(study)
    np.testing.assert_array_equal(known, np.array([k in expected for k in IMAGE_LABEL_KINDS], np.float32))
    np.testing.assert_array_equal(labels, np.array([expected.get(k, False) for k in IMAGE_LABEL_KINDS], np.float32))
    assert labels.dtype == known.dtype == np.float32 and IMAGE_LABEL_KINDS == FINDING_KINDS


def test_a_study_without_stage_two_has_no_known_label():
    labels, known = study_image_labels(Study(study_id="s", items=(_turn(1, "Is this PA?", "Yes."),)))
    assert not known.any() and not labels.any()


def test_phantom_labels_agree_with_the_phantom_truth():
    config = PhantomConfig(size=64)
    counts = np.zeros(len(IMAGE_LABEL_KINDS))
    positives = np.zeros(len(IMAGE_LABEL_KINDS))
    for index in range(40):
        study, _ = generate_study(3, index, config)
        labels, known = study_image_labels(study)
        present = {f["kind"] for f in study.cxrtrek_extras["phantom_truth"]["current"]["findings"]}
        truth = np.array([kind in present for kind in IMAGE_LABEL_KINDS], np.float32)
        np.testing.assert_array_equal(labels * known, truth * known, err_msg=study.study_id)
        counts += known
        positives += labels * known
    # every finding is asked about, present in some studies and absent in others
    assert (counts >= 10).all(), counts
    assert (positives > 0).all() and (positives < counts).all(), (positives, counts)


def test_released_wording_is_labelled_and_every_label_is_the_truth():
    """>= 80 % of the fixture's stage-2 presence turns labelled, each as the study's truth says."""
    studies = released_wording_studies(60, seed=5)
    asked = labelled = 0
    forms = set()
    for study in studies:
        truth = finding_truth(study)
        for item in study.items:
            key = str(item.extras.get("phantom_key", ""))
            if item.stage != 2 or not key.startswith("finding:"):
                continue
            kind, asked = key.split(":", 1)[1], asked + 1
            labels = turn_labels(item.question, item.qtype, item.answer)
            assert set(labels) <= {kind}, (item.question, labels)
            if labels:
                labelled += 1
                forms.add(item.extras["wording"])
                assert labels[kind] == (kind in truth), (study.study_id, item.question, item.answer)
        assert all(present == (kind in truth) for kind, present in presence_answers(study).items())
    assert asked >= 200 and labelled >= 0.8 * asked, (labelled, asked)
    assert len(forms) >= 15, forms  # read in (nearly) every form the fixture words them in


def _counted_studies():
    """Three studies counted by hand: labels (cardiomegaly +, pneumothorax -), (effusion +), none."""
    first = Study(study_id="a", items=(
        _turn(2, "Is there a pneumothorax?", "No."),
        _turn(2, "Is there cardiomegaly?", "Yes."),
        _turn(2, "Is the heart size normal?", "No."),                       # closed, not read
        _turn(2, "Describe the findings.", "Cardiomegaly.", "captioning"),   # not closed
    ))
    second = Study(study_id="b", items=(
        _turn(2, "Is there any evidence of effusion in the X-ray image? Which of the following statements is "
                 "accurate? A. No. or B. Yes.", "B. Yes.", "single-choice"),
    ))
    third = Study(study_id="c", items=(
        _turn(2, "What other radiodense anomalies are present in the image apart from consolidation and "
                 "atelectasis?", "Yes. Pleural effusion and opacities are present."),
    ))
    return first, second, third


def test_label_counts_and_their_console_line():
    first, second, third = _counted_studies()
    counts = image_label_counts([first, second, third])
    assert (counts.studies, counts.labelled_studies, counts.closed_turns, counts.read_turns) == (3, 2, 5, 3)
    assert counts.present == {"support_devices": 0, "cardiomegaly": 1, "pleural_effusion": 1, "pneumothorax": 0,
                              "consolidation": 0, "nodule": 0}
    assert counts.absent == {"support_devices": 0, "cardiomegaly": 0, "pleural_effusion": 0, "pneumothorax": 1,
                             "consolidation": 0, "nodule": 0}
    assert format_image_label_counts(counts) == (
        "image labels: 2 of 3 training studies carry at least one finding label (support_devices 0 (0 present), "
        "cardiomegaly 1 (1 present), pleural_effusion 1 (1 present), pneumothorax 1 (0 present), consolidation 0 "
        "(0 present), nodule 0 (0 present)); 3 of 5 closed stage-2 turns read")


def test_few_labelled_studies_are_warned_about_with_the_count():
    _, second, third = _counted_studies()
    few = format_image_label_counts(image_label_counts([second] + [third] * 10))  # 1 of 11: 9.1 %
    assert few.splitlines()[1] == ("  WARNING: only 1 of 11 training studies (9.1%) carry a finding label: the "
                                   "image-label loss will barely act")
    assert "WARNING" not in format_image_label_counts(image_label_counts([second] + [third] * 9))  # 1 of 10
    none = format_image_label_counts(image_label_counts([third] * 4), "studies")
    assert none.startswith("image labels: 0 of 4 studies") and "WARNING: only 0 of 4 studies (0.0%)" in none


def test_the_trainer_prints_the_count_when_it_trains_image_labels(tmp_path, capsys):
    from cxrtrek_jax.train.run import _print_image_labels
    from data_pipeline.batches.grain_pipeline import PipelineConfig
    from released_wording import write_released_wording

    path, root = write_released_wording(tmp_path, 4, seed=1)
    config = PipelineConfig(source=str(path), source_kind="json", image_root=str(root), image_labels=True)
    _print_image_labels(config, 0)
    expected = format_image_label_counts(image_label_counts(released_wording_studies(4, seed=1)),
                                         "training studies (split 'train')")
    assert capsys.readouterr().out == expected + "\n"
    assert expected.startswith("image labels: 4 of 4 training studies")
    _print_image_labels(PipelineConfig(source=str(path), source_kind="json", image_root=str(root)), 0)
    assert capsys.readouterr().out == ""  # no image-label loss, no line
