"""Detection per finding: the finding a detection turn boxes (phantom turns against the phantom's own
truth, released-sample turns labelled by hand) and per-finding mean IoU on hand-computed records."""

import pytest

from cxrtrek_jax.evaluation.scores.detection_findings import FINDING_ROWS, OTHER, detection_by_finding, detection_finding
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.schema.findings import FINDING_KINDS


def test_every_phantom_detection_turn_maps_to_the_finding_it_was_drawn_for():
    """The phantom's `phantom_key` ("detect:<kind>", or "detect:all" for a turn boxing every
    finding) is the truth; its box labels ("enlarged cardiac silhouette", "central venous
    catheter", "left middle zone nodule", ...) are what is read."""
    from data_pipeline.phantom import PhantomConfig, generate_study

    config = PhantomConfig(size=64, turns_per_study=(30, 40))
    seen = set()
    for index in range(60):
        study, _ = generate_study(3, index, config)
        for item in study.items:
            key = str(item.extras.get("phantom_key", ""))
            if item.qtype != "detection":
                continue
            kind = key.split(":", 1)[1]
            assert detection_finding(item.answer) == (None if kind == "all" else kind), (key, item.answer)
            seen.add(kind)
    assert seen >= set(FINDING_KINDS)


# Verbatim from the CXRTrek public sample (guanjinquan/CXRTrekReasoner, dataset/train_swift_demo.json):
# (question, answer, the finding boxed, by hand). The labels name the finding where there is one; the
# last four questions name a finding the box is not about (a clinical preamble, a related finding).
RELEASED = [
    ("[detection] Locate this phrase: The heart is mildly enlarged in the X-ray, output bounding box(s) In the format "
     "<|box|>(x1, y1), (x2, y2)<|/box|>.",
     "Bounding box of heart enlarged is: <|ref|> heart enlarged in cardiac silhouette <|/ref|> <|box|>(39.73, 53.57), "
     "(80.36, 83.48)<|/box|>.", "cardiomegaly"),
    ("[detection] Please provide a detailed description of the endotracheal tube within the bounding box. Output "
     "bounding box(s) In the format <|box|>(x1, y1), (x2, y2)<|/box|>.",
     "Bounding box of endotracheal tube is: <|ref|> endotracheal tube in trachea <|/ref|> <|box|>(2.23, 41.52), "
     "(38.39, 55.36)<|/box|>.", "support_devices"),
    ("[detection] Locate the phrase: Svc in the second x-ray of the main study, output bounding boxes.",
     "Bounding box of svc is: <|ref|> svc <|/ref|> <|box|>(42.41, 31.25), (48.66, 46.88)<|/box|>.", None),
    ("[detection] Draw bounding box(s) For this phrase: Left hilar structures in the X-ray.",
     "<|ref|> left hilar structures <|/ref|> <|box|>(53.57, 37.05), (67.86, 50.89)<|/box|>.", None),
    ("[detection] Here is the clinical history: ___ year old woman with recent pleural effusion? PE // ?interim change "
     "?interim change. Draw the bounding boxs for the phrase: Spine in the x-ray 2 of the main study, output in the "
     "format <|box|>(x1, y1), (x2, y2)<|/box|>.",
     "<|ref|> spine <|/ref|> <|box|>(46.43, 0), (58.93, 99.55)<|/box|>.", None),
    ("[detection] Indication: New endotracheal tube. Assess position. Locate the bounding box(s) Of phrase: Descending "
     "aorta in the X-ray with format <|box|>(x1, y1), (x2, y2)<|/box|>.",
     "<|ref|> descending aorta <|/ref|> <|box|>(60.71, 37.05), (70.09, 62.95)<|/box|>.", None),
    ("[detection] Given the phrase: There is likely atelectasis associated with the moderate left pleural effusion, "
     "please locate the bounding boxs in the second image of the main study, output in the format "
     "<|box|>(x1, y1), (x2, y2)<|/box|>.",
     "Detected atelectasis at: <|ref|> atelectasis in left lower lung zone <|/ref|> <|box|>(41.07, 56.25), "
     "(56.7, 81.25)<|/box|>.", None),
]


@pytest.mark.parametrize("question, answer, finding", RELEASED)
def test_released_detection_turns_map_by_their_box_labels(question, answer, finding):
    assert detection_finding(answer) == finding


def _box(label: str, x1: float, x2: float) -> str:
    return f"<|ref|> {label} <|/ref|> <|box|>({x1:.1f}, 0.0), ({x2:.1f}, 10.0)<|/box|>"


HEART = _box("enlarged cardiac silhouette", 0, 40)
LEFT_EFFUSION = _box("left pleural effusion", 0, 10)
TWO_EFFUSIONS = LEFT_EFFUSION + " " + _box("right pleural effusion", 50, 60)


def _record(study: str, turn: int, reference: str, prediction: str, context: str,
            qtype: str = "detection") -> PredictionRecord:
    return PredictionRecord(study, turn, 3, "Findings_Detection", qtype, "Locate it.", reference, prediction, context)


def test_mean_iou_per_finding_over_box_pairs_with_paired_intervals():
    own = [_record("s1", 0, HEART, _box("enlarged cardiac silhouette", 0, 20), "own"),  # IoU 20/40 = 0.5
           _record("s2", 0, HEART, HEART, "own"),  # 1.0
           # both effusions found, one exactly, one at half: (1 + 0.5) over 2 pairs
           _record("s1", 1, TWO_EFFUSIONS, _box("left pleural effusion", 0, 10) + " "
                   + _box("right pleural effusion", 50, 55), "own"),
           _record("s2", 1, LEFT_EFFUSION, "no box", "own"),  # the reference box missed: 0 over 1 pair
           _record("s1", 2, _box("svc", 40, 50), _box("svc", 40, 45), "own"),  # other: 0.5
           _record("s1", 3, "<|ref|> broken", HEART, "own"),  # unreadable reference: left out
           _record("s1", 4, "Yes.", "Yes.", "own", qtype="yes_no")]  # not a detection turn
    baseline = [_record(r.study_id, r.turn_index, r.reference, HEART, "none", r.qtype) for r in own]
    rows, unusable = detection_by_finding(own, {"swapped": [], "baseline": baseline}, resamples=200)
    by = {row["finding"]: row for row in rows}
    assert [row["finding"] for row in rows] == list(FINDING_ROWS) and unusable == 1
    assert by["cardiomegaly"]["turns"] == 2 and by["cardiomegaly"]["own"] == pytest.approx(0.75)
    assert by["pleural_effusion"]["own"] == pytest.approx(1.5 / 3)  # over pairs, not turns: not (0.75 + 0) / 2
    assert by[OTHER]["turns"] == 1 and by[OTHER]["own"] == pytest.approx(0.5)
    assert by["nodule"] == {"finding": "nodule", "turns": 0, "own": None, "swapped": None, "own_minus_swapped": None,
                            "own_minus_swapped_ci": None, "baseline": None, "own_minus_baseline": None,
                            "own_minus_baseline_ci": None}
    # The baseline's constant heart box: exact on the hearts, nothing on the effusions and the svc
    # (the heart box [0, 40] is matched to the left effusion [0, 10], IoU 10/40, a right one missed:
    # 0.25 over 2 pairs, then 0.25 over 1).
    assert by["cardiomegaly"]["baseline"] == 1.0 and by["cardiomegaly"]["own_minus_baseline"] == pytest.approx(-0.25)
    assert by["pleural_effusion"]["baseline"] == pytest.approx(0.5 / 3)
    assert by[OTHER]["baseline"] == 0.0 and by[OTHER]["own_minus_baseline_ci"] == (0.5, 0.5)
    assert by["cardiomegaly"]["swapped"] is None and by["cardiomegaly"]["own_minus_swapped_ci"] is None
