"""The grounding benchmark's short version: under the shipped recipe (the `grounded` experiment's
alignment phase, the demo's) the tiny model must answer an image-only question better with each study's own
radiograph than with another study's, so a recipe change that stops the model reading its images
fails here."""

import numpy as np
import pytest

from benchmarks import grounding
from experiments import get_experiment


@pytest.fixture(scope="module")
def view_run():
    alignment = get_experiment("grounded", "tiny").alignment
    return grounding.run_grounding(alignment.optim, preset="tiny", steps=40, batch_size=16, train_studies=200,
                                   test_studies=60, eval_every=10, questions=("view",),
                                   image_label_weight=alignment.image_label_weight, log=lambda _: None)


def test_own_images_beat_swapped_images_and_the_majority(view_run):
    last = view_run["records"][-1]
    assert view_run["majority"]["view"] == pytest.approx(0.5)  # balanced held-out rows
    assert last["own"]["view"] >= last["swapped"]["view"] + 0.15, view_run["records"]
    assert abs(last["swapped"]["view"] - 0.5) <= 0.15  # another study's image carries no answer
    assert grounding.first_step_above(view_run["records"], "view", 0.65) is not None


def test_the_question_set_is_balanced_per_question_and_held_out():
    train = grounding.make_grounding_set(40, 0, 32)
    test = grounding.make_grounding_set(20, 0, 32, first_index=40)
    assert not set(train.study) & set(test.study)
    for data in (train, test):
        for q in np.unique(data.question):
            answers = data.positive[data.question == q]
            assert answers.sum() * 2 == len(answers)  # as many yes as no (AP as PA)
        assert data.images.shape == (len(data), 32, 32) and data.images.dtype == np.float32


def test_the_table_reports_the_first_step_above_the_margin():
    records = [{"step": 10, "own": {"view": 0.6}, "swapped": {"view": 0.5}},
               {"step": 20, "own": {"view": 0.9}, "swapped": {"view": 0.52}}]
    result = {"records": records, "majority": {"view": 0.5}, "rows": {"test_per_question": {"view": 40}}}
    assert grounding.first_step_above(records, "view", 0.65) == 20
    assert grounding.first_step_above(records, "view", 0.95) is None
    row = grounding.result_table(result).splitlines()[-1]
    assert row == "| view | 40 | 0.90 | 0.52 | 0.50 | 20 |"


@pytest.mark.parametrize("name", ["view_ab", "view_ba"])
def test_the_single_choice_view_answers_name_the_option_of_the_studys_view(name):
    """The letter a row is trained on names, in its own question text, the study's view (read from
    the phantom's ground truth, not from the benchmark's table)."""
    from data_pipeline.phantom import PhantomConfig, generate_study

    question, positive, negative = grounding.QUESTIONS[name]
    options = dict(part.strip().split(". ", 1) for part in question.split("? ", 1)[1].replace(" B.", "|B.").split("|"))
    data = grounding.make_grounding_set(30, 0, 32, questions=(name,))
    q = list(grounding.QUESTIONS).index(name)
    assert set(data.question) == {q}
    for study, is_positive in zip(data.study, data.positive):
        s, _ = generate_study(0, int(study), PhantomConfig(size=64, turns_per_study=(1, 1)))
        view = s.cxrtrek_extras["phantom_truth"]["current"]["acquisition"]["view"]
        letter = positive if is_positive else negative
        assert options[letter].endswith(f"({view})")


def test_rows_carry_their_studys_finding_answers_as_image_labels():
    from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS

    data = grounding.make_grounding_set(40, 0, 32, questions=("view", "cardiomegaly", "pleural_effusion"))
    labels, known = grounding.row_image_labels(data)
    names = list(grounding.QUESTIONS)
    for row in range(len(data)):
        same_study = data.study == data.study[row]
        for k, kind in enumerate(IMAGE_LABEL_KINDS):
            asked = same_study & (data.question == names.index(kind))
            assert known[row, k] == float(asked.any())
            if asked.any():
                assert labels[row, k] == float(data.positive[asked][0])
    assert known[:, [IMAGE_LABEL_KINDS.index("cardiomegaly"), IMAGE_LABEL_KINDS.index("pleural_effusion")]].any()
    assert not known[:, IMAGE_LABEL_KINDS.index("nodule")].any()  # not in the set: unknown
