"""Paired differences of scored predictions: values by hand, pairing by turn, study-bootstrap intervals."""

import math

import pytest

from cxrtrek_jax.evaluation.scores.paired_differences import paired_difference
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, read_predictions


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
    with pytest.raises(ValueError, match="paired metric must be one of accuracy, ce_micro_f1, mean_iou, rouge_l, "
                                         "bleu_1, bleu_2, bleu_3, bleu_4, got 'cider'"):
        paired_difference([], [], "cider")


def _detection(study: str, turn: int, mean_iou: float, pairs: int) -> PredictionRecord:
    return PredictionRecord(study, turn, 3, "Findings_Detection", "detection", "Locate it.", "r", "p", "own",
                            scores={"mean_iou": mean_iou, "pairs": pairs, "hits": 0, "unparseable": False})


def _caption(study: str, turn: int, reference: str, prediction: str, rouge: float) -> PredictionRecord:
    return PredictionRecord(study, turn, 3, "Attributes_Description", "captioning", "Describe it.", reference,
                            prediction, "own", scores={"bleu_1": 0.0, "rouge_l": rouge})


def test_mean_iou_is_pair_weighted_as_in_metrics_json():
    # Side a: 0.5 over 2 pairs and 0.8 over 1 pair: (1.0 + 0.8) / 3 = 0.6 (not the mean of turns, 0.65).
    a = [_detection("s1", 0, 0.5, 2), _detection("s2", 0, 0.8, 1), _closed("s2", 1, True)]
    b = [_detection("s1", 0, 0.25, 2), _detection("s2", 0, 0.0, 1)]
    result = paired_difference(a, b, "mean_iou", resamples=0)
    assert result.turns == 2 and result.a == pytest.approx(0.6) and result.b == pytest.approx(0.5 / 3)


def test_caption_rouge_l_is_a_mean_and_bleu_1_a_corpus_value():
    a = [_caption("s1", 0, "small left effusion", "small left effusion", 1.0),
         _caption("s2", 0, "large right effusion", "effusion", 0.4)]
    b = [_caption("s1", 0, "small left effusion", "no", 0.0),
         _caption("s2", 0, "large right effusion", "large right effusion present", 0.9)]
    rouge = paired_difference(a, b, "rouge_l", resamples=0)
    assert rouge.a == pytest.approx(0.7) and rouge.b == pytest.approx(0.45)
    # Corpus BLEU-1, by hand: side a 4 of 4 unigrams match, hypotheses 4 words against 6 reference
    # words: brevity penalty exp(1 - 6/4); side b 3 of 5 match, 5 words against 6: 0.6 exp(1 - 6/5).
    bleu = paired_difference(a, b, "bleu_1", resamples=0)
    assert bleu.a == pytest.approx(math.exp(1 - 6 / 4)) and bleu.b == pytest.approx(0.6 * math.exp(1 - 6 / 5))
    # Turns without caption scores do not count; none at all leaves the metric undefined.
    assert paired_difference([_detection("s1", 0, 0.5, 2)], [_detection("s1", 0, 0.5, 2)], "bleu_1").a is None


def test_paired_values_equal_the_scorers_metrics(tmp_path):
    """Scored by `score_predictions`, the records' paired values reproduce metrics.json's groups."""
    from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig, score_predictions

    box = "<|ref|> effusion <|/ref|> <|box|>({}, 10.0), ({}, 30.0)<|/box|>"
    records = []
    for s, (prediction, caption) in enumerate([(box.format(10.0, 30.0), "small left effusion"),
                                               (box.format(20.0, 40.0), "A large effusion, on the Right."),
                                               ("no box", "left")]):
        records.append(PredictionRecord(f"s{s}", 0, 3, "Findings_Detection", "detection", "Locate it.",
                                        box.format(10.0, 30.0) + " <|box|>(50.0, 10.0), (60.0, 30.0)<|/box|>",
                                        prediction, "own"))
        records.append(PredictionRecord(f"s{s}", 1, 3, "Attributes_Description", "captioning", "Describe it.",
                                        "Small left pleural effusion.", caption, "own"))
    scored_path = tmp_path / "scored.jsonl"
    metrics = score_predictions(records, ScoringConfig(meteor=False, bootstrap_resamples=0), scored_path=scored_path)
    scored = list(read_predictions(scored_path))
    section = metrics["contexts"]["own"]
    for group, metric in (("3/detection", "mean_iou"), ("3/captioning", "bleu_1"), ("3/captioning", "bleu_4"),
                          ("3/captioning", "rouge_l")):
        paired = paired_difference(scored, scored, metric, resamples=0)
        assert paired.a == pytest.approx(section["by_stage_qtype"][group]["metrics"][metric]["value"]), metric

