"""Detection scoring: label-first one-to-one matching, IoU 0 for unmatched boxes, unparseable predictions."""

import pytest

from cxrtrek_jax.evaluation.metrics.detection_metrics import BoxPair, match_boxes, score_detection
from data_pipeline.schema.boxes import Box, BoxParseError, format_boxes


def _answer(*boxes: Box) -> str:
    return "Bounding box: " + format_boxes(list(boxes)) + "."


def test_exact_and_shifted_box():
    ref = _answer(Box("carina", 0, 0, 10, 10))
    exact = score_detection(ref, ref)
    assert exact.mean_iou == 1.0 and exact.hits == 1 and not exact.unparseable
    # Shifted by 5 in x: intersection 50, union 150 -> IoU 1/3, below 0.5.
    shifted = score_detection(ref, _answer(Box("carina", 5, 0, 15, 10)))
    assert shifted.mean_iou == pytest.approx(1 / 3)
    assert shifted.hits == 0
    assert score_detection(ref, _answer(Box("carina", 5, 0, 15, 10)), iou_threshold=0.3).hits == 1


def test_label_first_matching_beats_higher_iou():
    left, right = Box("left lung", 0, 0, 50, 100), Box("right lung", 50, 0, 100, 100)
    # The predicted "left lung" box overlaps the right lung box more, but labels match first.
    predicted = [Box("right lung", 50, 0, 100, 100), Box("left lung", 30, 0, 80, 100)]
    pairs = match_boxes([left, right], predicted)
    assert BoxPair(0, 1, pytest.approx(20 * 100 / (80 * 100))) in pairs
    assert BoxPair(1, 0, 1.0) in pairs
    assert len(pairs) == 2


def test_leftovers_match_by_iou_and_unmatched_count_as_zero():
    ref = [Box("heart", 20, 40, 80, 80), Box("spine", 45, 0, 55, 100)]
    predicted = [Box("cardiac silhouette", 20, 40, 80, 80), Box("trachea", 0, 0, 5, 5), Box("spine", 45, 0, 55, 100)]
    pairs = match_boxes(ref, predicted)
    # spine by label, heart <-> cardiac silhouette by IoU, trachea spurious.
    assert pairs == (BoxPair(1, 2, 1.0), BoxPair(0, 0, 1.0), BoxPair(None, 1, 0.0))
    score = score_detection(_answer(*ref), _answer(*predicted))
    assert score.num_pairs == 3 and score.iou_sum == pytest.approx(2.0)
    assert score.mean_iou == pytest.approx(2 / 3) and score.hits == 2
    missed = match_boxes(ref, [])
    assert missed == (BoxPair(0, None, 0.0), BoxPair(1, None, 0.0))


def test_labels_compare_normalised():
    ref = [Box("Right  hilar structures", 10, 10, 20, 20)]
    predicted = [Box("right hilar structures.", 10, 10, 20, 20), Box("right hilar structures", 50, 50, 60, 60)]
    pairs = match_boxes(ref, predicted)
    assert pairs[0] == BoxPair(0, 0, 1.0)


@pytest.mark.parametrize("prediction", ["I cannot see it.", "<|ref|> carina <|/ref|> <|box|>(1, 2)<|/box|>", ""])
def test_unparseable_prediction(prediction):
    score = score_detection(_answer(Box("carina", 0, 0, 10, 10)), prediction)
    assert score.unparseable
    assert score.num_pairs == 1 and score.mean_iou == 0.0 and score.hits == 0


def test_bad_reference_raises():
    with pytest.raises(BoxParseError, match="no <\\|box\\|>"):
        score_detection("no boxes here", _answer(Box("carina", 0, 0, 10, 10)))
    with pytest.raises(BoxParseError):
        score_detection("<|ref|> carina <|/ref|>", "")
