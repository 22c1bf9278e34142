"""Detection turns scored as the field reports them: AP per class and mAP at IoU 0.4 / 0.5 next to
mean IoU and accuracy at IoU >= 0.5, in the metrics dictionary (metrics.json), on a hand-computed case."""

import numpy as np
import pytest

from cxrtrek_jax.evaluation.metrics.detection_ap import detections_by_class, weighted_ap
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig, score_predictions
from data_pipeline.schema.boxes import Box

HEART = "<|ref|> heart <|/ref|> <|box|>(0.0, 0.0), (10.0, 10.0)<|/box|>"
EFFUSION = "<|ref|> right pleural effusion <|/ref|> <|box|>(50.0, 50.0), (70.0, 90.0)<|/box|>"
# study: (reference, prediction)
CASES = {
    "a": (HEART, "<|ref|> heart <|/ref|> <|box|>(0.0, 0.0), (10.0, 8.0)<|/box|>"),  # IoU 0.8
    "b": (HEART, "<|ref|> heart <|/ref|> <|box|>(0.0, 0.0), (10.0, 4.5)<|/box|>"),  # IoU 0.45
    "c": (f"{EFFUSION} {HEART}",  # the heart missed; the effusion found (IoU 1) and a spurious effusion box
          "<|ref|> Right Pleural-Effusion <|/ref|> <|box|>(50.0, 50.0), (70.0, 90.0)<|/box|> "
          "<|box|>(0.0, 0.0), (5.0, 5.0)<|/box|>"),
    "d": (EFFUSION, "<|ref|> right pleural effusion <|/ref|> <|box|>(1, 2"),  # malformed: no boxes
}
# By hand (one score for every box: AP = recall x precision):
#   heart, 3 references, predictions a (IoU 0.8) and b (IoU 0.45):
#     IoU 0.4: 2 TP of 2 -> 2/3 x 1 = 2/3;  IoU 0.5: 1 TP of 2 -> 1/3 x 1/2 = 1/6
#   right pleural effusion, 2 references, predictions in c: one TP, one FP -> 1/2 x 1/2 = 1/4 at both
AP = {0.4: {"heart": 2 / 3, "right pleural effusion": 1 / 4}, 0.5: {"heart": 1 / 6, "right pleural effusion": 1 / 4}}
MAP = {0.4: (2 / 3 + 1 / 4) / 2, 0.5: (1 / 6 + 1 / 4) / 2}  # 11/24, 5/24


def _records():
    return [PredictionRecord(study, 0, 3, "Findings_Detection", "detection", "Locate the findings.", reference,
                             prediction, "own") for study, (reference, prediction) in CASES.items()]


@pytest.fixture(scope="module")
def metrics():
    return score_predictions(_records(), ScoringConfig(meteor=False, bootstrap_resamples=50, seed=3))


@pytest.mark.parametrize("group", [("by_stage", "3"), ("by_qtype", "detection"), ("by_task_type", "Findings_Detection")])
def test_map_per_class_at_both_thresholds(metrics, group):
    entries = metrics["contexts"]["own"][group[0]][group[1]]["metrics"]
    for threshold, per_class in AP.items():
        for name, value in per_class.items():
            assert entries[f"ap@{threshold}[{name}]"]["value"] == pytest.approx(value)
        assert entries[f"map@{threshold}"]["value"] == pytest.approx(MAP[threshold])
        assert entries[f"map@{threshold}"]["n"] == 4
        low, high = entries[f"map@{threshold}"]["ci"]
        assert 0.0 <= low <= high <= 1.0


def test_mean_iou_and_accuracy_at_iou_half_beside_it(metrics):
    entries = metrics["contexts"]["own"]["by_stage"]["3"]["metrics"]
    # pairs (by label, then what is left regardless of label): a 0.8, b 0.45, c effusion 1.0 and the
    # spurious box on the heart 25 / 100 = 0.25, d missed 0 -> 5 pairs; mAP counts that box as a wrong class
    assert entries["mean_iou"]["value"] == pytest.approx((0.8 + 0.45 + 1.0 + 0.25) / 5)
    assert entries["acc_iou50"]["value"] == pytest.approx(2 / 5)
    assert entries["detection_unparseable_rate"]["value"] == pytest.approx(1 / 4)


def test_weights_count_an_item_as_often_as_it_is_drawn():
    """Item b drawn twice, a never: heart at IoU 0.5 has references 3 (b, b, c), predictions b, b
    (both FP) -> AP 0."""
    heart = Box("heart", 0, 0, 10, 10)
    items = [{"heart": ([heart], [Box("heart", 0, 0, 10, 8)])}, {"heart": ([heart], [Box("heart", 0, 0, 10, 4.5)])},
             {"heart": ([heart], [])}]
    by_class = detections_by_class(items, 0.5)
    assert weighted_ap(by_class["heart"]) == pytest.approx(1 / 3 * 1 / 2)
    assert weighted_ap(by_class["heart"], np.array([0.0, 2.0, 1.0])) == 0.0
    assert weighted_ap(by_class["heart"], np.array([2.0, 0.0, 1.0])) == pytest.approx(2 / 3)
