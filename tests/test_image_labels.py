"""Finding labels from a study's stage-2 answers: the matching rules on hand-made turns, and on
phantom studies against the phantom's own ground truth (which the labeller never reads)."""

import numpy as np

from data_pipeline.schema.findings import FINDING_KINDS
from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS, presence_answers, study_image_labels
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.schema.records import QAItem, Study


def _turn(stage, question, answer, qtype="yes_no"):
    return QAItem(stage=stage, task_type="Findings_Identification", qtype=qtype, image_input_count=1,
                  question=question, answer=answer)


def test_labels_come_from_stage_two_presence_answers():
    study = Study(study_id="s", images=("a.png",), items=(
        _turn(1, "<image>\nIs there cardiomegaly?", "Yes."),            # stage 1: not a label
        _turn(2, "  IS THE HEART ENLARGED? ", "No. The heart is normal."),  # a presence wording
        _turn(2, "Is there any evidence of pneumothorax here?", "Yes, small apical."),  # by name
        _turn(2, "Is there a pleural effusion or a lung nodule?", "No."),  # two findings: none
        _turn(2, "Is there any consolidation?", "Yes."),
        _turn(2, "Does this X-ray show an area of consolidation?", "No."),  # contradicts: unknown
        _turn(2, "Are there any support devices?", "Two tubes.", "open"),  # not yes/no
        _turn(2, "Is there a lung nodule?", "Possibly."),                 # no yes/no answer
    ))
    assert presence_answers(study) == {"cardiomegaly": False, "pneumothorax": True}
    labels, known = study_image_labels(study)
    expected_known = [kind in ("cardiomegaly", "pneumothorax") for kind in IMAGE_LABEL_KINDS]
    np.testing.assert_array_equal(known, np.array(expected_known, np.float32))
    np.testing.assert_array_equal(labels, np.array([k == "pneumothorax" for k in IMAGE_LABEL_KINDS], np.float32))
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
