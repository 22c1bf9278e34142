"""The grounding benchmark's short version: under the shipped recipe (the `grounded` experiment's
alignment phase, the demo's) the tiny model must answer an image-only question better with each study's own
radiograph than with another study's, so a recipe change that stops the model reading its images
fails here."""

import numpy as np
import pytest

from benchmarks import grounding
from experiments import get_experiment


# Both runs pad their rows to this many tokens and train as many steps with one batch size, so the
# second loads the first's compiled train step and scorer from the session's compilation cache.
ROW_TOKENS = 160


@pytest.fixture(scope="module")
def view_run():
    alignment = get_experiment("grounded", "tiny").alignment
    return grounding.run_grounding(alignment.optim, preset="tiny", steps=40, batch_size=16, train_studies=200,
                                   test_studies=60, eval_every=10, questions=("view",),
                                   image_label_weight=alignment.image_label_weight, row_tokens=ROW_TOKENS,
                                   log=lambda _: None)


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


# ----------------------------------------------------------------------------- detection questions

from benchmarks import grounding_boxes  # noqa: E402
from data_pipeline.schema.boxes import parse_boxes  # noqa: E402


@pytest.fixture(scope="module")
def box_run():
    """The closed cardiomegaly question and all three detection questions together (the mixed rows,
    the box rows' image labels and the box decoding path), on few rows, shaped as `view_run`."""
    alignment = get_experiment("grounded", "tiny").alignment
    return grounding.run_grounding(alignment.optim, preset="tiny", steps=40, batch_size=16, train_studies=40,
                                   test_studies=24, eval_every=20,
                                   questions=("cardiomegaly", *grounding_boxes.DETECTION_QUESTIONS),
                                   image_label_weight=alignment.image_label_weight, row_tokens=ROW_TOKENS,
                                   log=lambda _: None)


def test_detection_scores_are_well_formed_and_every_box_answer_parses(box_run):
    names = list(grounding_boxes.DETECTION_QUESTIONS)
    assert [r["step"] for r in box_run["records"]] == [20, 40]
    for name in names:
        assert box_run["rows"]["test_per_question"][name] > 0
        assert 0.0 < box_run["constant_box"][name] <= 1.0
        assert parse_boxes(box_run["constant_answer"][name])
    for record in box_run["records"]:
        assert record["parsed"] == 1.0  # the grammar holds: every own and swapped answer is boxes
        assert set(record["iou_own"]) == set(record["iou_swapped"]) == set(names)
        for value in (*record["iou_own"].values(), *record["iou_swapped"].values()):
            assert 0.0 <= value <= 1.0
        assert 0.0 <= record["own"]["cardiomegaly"] <= 1.0 and np.isfinite(record["loss"])
    for name in names:
        for reference, own, swapped in box_run["examples"][name]:
            assert parse_boxes(reference) and parse_boxes(own) and parse_boxes(swapped)
    table = grounding.detection_table(box_run).splitlines()
    assert len(table) == 2 + len(names) and table[2].startswith("| heart_box | ")
    steps = grounding.detection_by_step(box_run).splitlines()
    assert [line.split(" | ")[0] for line in steps[2:]] == ["| 20", "| 40"]


def test_detection_rows_ask_and_answer_as_the_phantoms_detection_turns():
    """Each row's question is one of the phantom's own detection wordings for its finding, and its
    answer is the phantom's answer to that finding's detection turn (read from the generated QA,
    not from the regions the benchmark reads)."""
    from data_pipeline.phantom import PhantomConfig, generate_study
    from data_pipeline.schema.findings import FINDING_NAMES

    frontals, truths = grounding._render(24, 3, 32, 256, 0)
    data = grounding_boxes.detection_set(frontals, truths, 0, 3, tuple(grounding_boxes.DETECTION_QUESTIONS))
    names = list(grounding_boxes.DETECTION_QUESTIONS)
    checked, worded = set(), set()
    for study, q, answer in zip(data.study, data.question, data.answers):
        kind = grounding_boxes.DETECTION_QUESTIONS[names[q]]
        phantom, _ = generate_study(3, int(study), PhantomConfig(size=256, turns_per_study=(80, 80)))
        turns = [item for item in phantom.items if item.qtype == "detection"
                 and f" the {FINDING_NAMES[kind]}" in item.question]
        assert turns, (study, kind)
        assert {item.answer for item in turns} == {answer}
        checked.add(names[q])
        worded |= {names[q] for item in turns if item.question == grounding_boxes.detection_question(names[q])}
    assert checked == set(names)
    assert worded  # the benchmark's wording is one the phantom asks
    present = {n: sum(grounding_boxes.DETECTION_QUESTIONS[n] in {f["kind"] for f in t["current"]["findings"]}
                      for t in truths) for n in names}
    assert {n: int((data.question == q).sum()) for q, n in enumerate(names)} == present  # one row per study


def _answer(*boxes):
    return " ".join(f"<|ref|> {label} <|/ref|> <|box|>({x1:.1f}, {y1:.1f}), ({x2:.1f}, {y2:.1f})<|/box|>"
                    for label, x1, y1, x2, y2 in boxes)


def test_mean_iou_pools_box_pairs_over_rows():
    """Hand-derived: row 1 one box hit exactly (IoU 1); row 2 two reference boxes, one predicted
    half-overlapping (IoU 100/200) and one missed; row 3 unparseable (its box missed): 1.5 / 4."""
    references = [_answer(("heart", 0, 0, 10, 10)),
                  _answer(("left effusion", 0, 0, 10, 10), ("right effusion", 50, 50, 60, 60)),
                  _answer(("heart", 20, 20, 30, 30))]
    predictions = [_answer(("heart", 0, 0, 10, 10)), _answer(("left effusion", 0, 0, 10, 20)), "<|ref|> heart"]
    assert grounding_boxes.mean_iou(references, predictions) == pytest.approx(1.5 / 4)


def test_the_detection_tables_report_the_first_step_above_swapped_and_the_constant_box():
    records = [{"step": 10, "loss": 2.0, "iou_own": {"heart_box": 0.5}, "iou_swapped": {"heart_box": 0.2}},
               {"step": 20, "loss": 1.5, "iou_own": {"heart_box": 0.7}, "iou_swapped": {"heart_box": 0.3}}]
    result = {"records": records, "constant_box": {"heart_box": 0.6}, "rows": {"test_per_question": {"heart_box": 9}}}
    assert grounding.first_step_boxes_above(records, "heart_box", 0.6) == 20  # 0.5 beats swapped, not 0.6
    assert grounding.first_step_boxes_above(records, "heart_box", 0.1) == 10
    assert grounding.first_step_boxes_above(records, "heart_box", 0.7) is None
    assert grounding.detection_table(result).splitlines()[-1] == "| heart_box | 9 | 0.700 | 0.300 | 0.600 | 20 |"
    assert grounding.detection_by_step(result).splitlines()[-1] == "| 20 | 1.500 | 0.700 / 0.300 |"
