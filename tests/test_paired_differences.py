"""Paired differences of scored predictions: values by hand, pairing by turn, study-bootstrap intervals."""

import pytest

from cxrtrek_jax.evaluation.scores.paired_differences import paired_difference
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord


def _closed(study: str, turn: int, correct: bool | None, stage: int = 2) -> PredictionRecord:
    scores = {} if correct is None else {"correct": correct}
    return PredictionRecord(study, turn, stage, "Findings_Identification", "yes_no", "q?", "Yes.", "x", "own",
                            scores=scores)


def _report(study: str, reference: list[str], predicted: list[str]) -> PredictionRecord:
    return PredictionRecord(study, 9, 8, "Report_Generation", "captioning", "Report?", "r", "p", "own",
                            scores={"ce_reference_positive": reference, "ce_predicted_positive": predicted})


def test_accuracy_difference_over_the_turns_both_sides_scored():
    a = [_closed("s1", 0, True), _closed("s1", 1, True), _closed("s2", 0, False), _closed("s3", 0, True)]
    b = [_closed("s1", 0, False), _closed("s1", 1, True), _closed("s2", 0, False), _closed("s3", 0, None),
         _closed("s4", 0, True)]
    # Paired turns: (s1,0) (s1,1) (s2,0); s3 is unscored on side b, s4 absent from side a.
    result = paired_difference(a, b, "accuracy", resamples=0)
    assert (result.turns, result.studies) == (3, 2)
    assert result.a == pytest.approx(2 / 3) and result.b == pytest.approx(1 / 3)
    assert result.difference == pytest.approx(1 / 3) and result.ci is None and not result.above_zero
    only_s1 = paired_difference(a, b, "accuracy", lambda r: r.study_id == "s1", resamples=0)
    assert (only_s1.a, only_s1.b) == (1.0, 0.5)


def test_report_label_micro_f1_by_hand():
    a = [_report("s1", ["Cardiomegaly", "Edema"], ["Cardiomegaly"]),  # tp 1, fn 1
         _report("s2", ["No Finding"], ["No Finding", "Edema"])]  # tp 1, fp 1
    b = [_report("s1", ["Cardiomegaly", "Edema"], []),  # fn 2
         _report("s2", ["No Finding"], ["No Finding"])]  # tp 1
    result = paired_difference(a, b, "ce_micro_f1", resamples=0)
    assert result.a == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 0.667
    assert result.b == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))  # 0.5


def test_intervals_are_paired_by_study():
    """Side a right wherever side b is, plus one more turn in every study: every replicate's
    difference is exactly 1/3, so the paired interval is a point; with sides that are equal turn for
    turn it is 0, and an unpaired comparison could not give either."""
    a, b = [], []
    for s in range(20):
        hard = s % 2 == 0  # half the studies are hard for both sides
        for t in range(3):
            b.append(_closed(f"s{s}", t, correct=not hard and t == 0))
            a.append(_closed(f"s{s}", t, correct=(not hard and t == 0) or t == 2))
    result = paired_difference(a, b, "accuracy", resamples=300, seed=1)
    assert result.ci == pytest.approx((1 / 3, 1 / 3)) and result.above_zero
    same = paired_difference(b, b, "accuracy", resamples=300)
    assert same.ci == pytest.approx((0.0, 0.0)) and not same.above_zero


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="paired metric must be one of accuracy, ce_micro_f1, got 'bleu_1'"):
        paired_difference([], [], "bleu_1")
