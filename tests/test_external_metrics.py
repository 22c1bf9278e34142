"""The external sets' metrics against independent references: AUROC against hand-counted pairs (and
scikit-learn when installed), AP / mAP against a hand-computed case at IoU 0.4 and 0.5, VQA
answers against hand judgements, and the report metrics of `score_external` against sacrebleu and
pycocoevalcap, the packages `nlg_metrics` is built on."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cxrtrek_jax.evaluation.metrics.auroc import auroc, binary_f1
from cxrtrek_jax.evaluation.metrics.detection_ap import average_precision, match_detections, mean_average_precision
from cxrtrek_jax.evaluation.metrics.vqa_answers import closed_correct, exact_match, open_recall
from cxrtrek_jax.evaluation.scores.external_scores import (
    ExternalAnswer, fit_vqa_majority, format_external_table, score_external,
)
from data_pipeline.construct.box_annotations import PixelBox
from data_pipeline.external.external_items import ExternalItem, ExternalSet
from data_pipeline.schema.boxes import Box


def test_auroc_counts_pairs_ties_half_and_weights_as_repeats():
    # 4 pos-neg pairs: (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3 / 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pos {0.5, 0.9}, neg {0.5, 0.2}: tie 0.5, 1, 1, 1 -> 3.5 / 4
    assert auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    # a weight of 2 on the negative 0.4 counts it twice: pairs 1+0 ... -> (1 + 0 + 0 + 1 + 1 + 1) / 6
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], weights=[1, 2, 1, 1]) == pytest.approx(4 / 6)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    assert auroc([0.3] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)  # a constant score
    assert binary_f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert np.isnan(binary_f1([0, 0], [0, 0]))


def test_auroc_equals_scikit_learn():
    from sklearn import metrics  # the dev extra: an independent reference, never skipped

    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200), 2)  # rounded: many ties
    labels = rng.random(200) < 0.3
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))


# Image A: references R1 (0,0)-(10,10), R2 (50,50)-(60,60); image B: R3 (20,20)-(30,30).
_REFERENCES = {"A": (Box("x", 0, 0, 10, 10), Box("x", 50, 50, 60, 60)), "B": (Box("x", 20, 20, 30, 30),)}
# Predictions: A p1 (score .9) = R1 (IoU 1); A p2 (.8) covers 45 % of R2 (IoU 0.45: a hit at 0.4, a miss
# at 0.5); B p3 (.7) far away; B p4 (.6) = R3.
_PREDICTIONS = {"A": ((Box("x", 0, 0, 10, 10), 0.9), (Box("x", 50, 50, 60, 54.5), 0.8)),
                "B": ((Box("x", 70, 70, 80, 80), 0.7), (Box("x", 20, 20, 30, 30), 0.6))}


def _ranked(threshold: float, tied: bool):
    scores, hits = [], []
    for image, predicted in _PREDICTIONS.items():
        boxes = [b for b, _ in predicted]
        values = [1.0 if tied else s for _, s in predicted]
        hits += match_detections(_REFERENCES[image], boxes, values, threshold).tolist()
        scores += values
    return np.array(scores), np.array(hits)


def test_average_precision_hand_computed_at_both_thresholds():
    # IoU 0.4, ranked TP TP FP TP: precision 1, 1, 2/3, 3/4 at recall 1/3, 2/3, 2/3, 1;
    # interpolated 1, 1, 3/4, 3/4 -> AP = 1/3 + 1/3 + 0 + 1/3 * 3/4 = 11/12
    assert average_precision(*_ranked(0.4, False), 3) == pytest.approx(11 / 12)
    # IoU 0.5, ranked TP FP FP TP: precision 1, 1/2, 1/3, 1/2 at recall 1/3, 1/3, 1/3, 2/3 -> 1/3 + 1/3 * 1/2
    assert average_precision(*_ranked(0.5, False), 3) == pytest.approx(0.5)
    # every box scored alike: one point, AP = recall x precision: 3/3 * 3/4 and 2/3 * 2/4
    assert average_precision(*_ranked(0.4, True), 3) == pytest.approx(0.75)
    assert average_precision(*_ranked(0.5, True), 3) == pytest.approx(1 / 3)
    # TP FP FP TP TP over 3 references: precision 1, 1/2, 1/3, 1/2, 3/5; the step to recall 2/3 takes
    # the best precision at or beyond it (3/5, not 1/2): 1/3 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15
    assert average_precision([5, 4, 3, 2, 1], [1, 0, 0, 1, 1], 3) == pytest.approx(11 / 15)
    assert np.isnan(average_precision([], [], 0)) and average_precision([], [], 2) == 0.0
    assert mean_average_precision({"a": 0.5, "b": float("nan"), "c": 1.0}) == pytest.approx(0.75)


def test_detection_through_score_external_scales_pixels_and_averages_classes():
    # One 200 x 100 (height x width) image: a Cardiomegaly box of pixels (10, 40)-(50, 70) is
    # (10, 20)-(50, 35) on the 0-100 grid; an effusion box drawn where the image has none.
    items = (ExternalItem("i#Cardiomegaly", "i", ("i.dicom",), "", label="Cardiomegaly",
                          boxes=(PixelBox("Cardiomegaly", 10, 40, 50, 70),)),
             ExternalItem("i#Pleural effusion", "i", ("i.dicom",), "", label="Pleural effusion"),
             ExternalItem("j#Cardiomegaly", "j", ("j.dicom",), "", label="Cardiomegaly",
                          boxes=(PixelBox("Cardiomegaly", 0, 0, 100, 100),)),
             ExternalItem("j#Pleural effusion", "j", ("j.dicom",), "", label="Pleural effusion",
                          boxes=(PixelBox("Pleural effusion", 0, 0, 50, 100),)))
    data = ExternalSet("vindr-cxr", "detection", "test", items, 2, Counter(), "fixture")
    answers = {
        "i#Cardiomegaly": ExternalAnswer("i#Cardiomegaly", "<|ref|>cardiomegaly<|/ref|><|box|>(10, 20), (50, 35)<|/box|>",
                                         image_size=(200, 100)),
        "i#Pleural effusion": ExternalAnswer("i#Pleural effusion",
                                             "<|ref|>effusion<|/ref|><|box|>(0, 0), (10, 10)<|/box|>", image_size=(200, 100)),
        "j#Cardiomegaly": ExternalAnswer("j#Cardiomegaly", "no box here", image_size=(100, 100)),
        # (0, 0)-(50, 45) against (0, 0)-(50, 100): IoU 0.45
        "j#Pleural effusion": ExternalAnswer("j#Pleural effusion", "<|ref|>effusion<|/ref|><|box|>(0, 0), (50, 45)<|/box|>",
                                             image_size=(100, 100)),
    }
    scores = score_external(data, answers, resamples=0)
    m = {k: v.value for k, v in scores.metrics.items()}
    # Cardiomegaly: 1 TP of 2 references, no FP -> 1/2 * 1; effusion at 0.4: TP 1, FP 1, 1 ref -> 1 * 1/2
    assert m["ap@0.4[Cardiomegaly]"] == pytest.approx(0.5) and m["ap@0.4[Pleural effusion]"] == pytest.approx(0.5)
    assert m["map@0.4"] == pytest.approx(0.5)
    # at 0.5 the effusion box misses: AP 0
    assert m["ap@0.5[Pleural effusion]"] == 0.0 and m["map@0.5"] == pytest.approx(0.25)
    assert scores.counts["malformed_box_answers"] == 0 and scores.baseline_name == ""


def test_vqa_answers_and_the_majority_baseline():
    assert closed_correct("Yes, there is an effusion.", "yes") and not closed_correct("No.", "Yes")
    assert closed_correct("left lung", "Left Lung.") and not closed_correct("left", "left lung")
    assert open_recall("the right lower lobe", "Right lung") == pytest.approx(0.5)
    assert exact_match("Coronal plane.", "coronal plane") and not exact_match("coronal", "coronal plane")
    assert fit_vqa_majority([("closed", "Yes"), ("closed", "yes"), ("closed", "No"), ("open", "heart")]) == {
        "closed": "yes", "open": "heart"}
    items = (ExternalItem("1", "a", ("a",), "Yes", question="q", answer_type="closed"),
             ExternalItem("2", "a", ("a",), "No", question="q", answer_type="closed"),
             ExternalItem("3", "b", ("b",), "right lung", question="q", answer_type="open"))
    data = ExternalSet("vqa-rad", "vqa", "test", items, 3, Counter(), "fixture")
    answers = {"1": ExternalAnswer("1", "yes"), "2": ExternalAnswer("2", "yes"), "3": ExternalAnswer("3", "right")}
    scores = score_external(data, answers, resamples=50, vqa_majority={"closed": "no", "open": "heart"})
    assert scores.metrics["closed_accuracy"].value == pytest.approx(0.5)
    assert scores.metrics["open_recall"].value == pytest.approx(0.5)
    assert scores.metrics["open_exact_match"].value == 0.0
    assert scores.baseline["closed_accuracy"].value == pytest.approx(0.5)  # "no" is right once
    assert scores.baseline["open_recall"].value == 0.0
    # image "a" holds both closed items: every replicate draws them together, so closed accuracy is
    # 0.5 in every replicate that has them
    assert scores.metrics["closed_accuracy"].low == pytest.approx(0.5) == scores.metrics["closed_accuracy"].high


def test_presence_auroc_f1_and_the_constant_baseline():
    labels = {"Cardiomegaly": [1, 0, 1, 0], "Edema": [0, 0, 1, 0]}
    p = {"Cardiomegaly": [0.9, 0.2, 0.4, 0.6], "Edema": [0.1, 0.3, 0.7, 0.2]}
    items, answers = [], {}
    for observation, values in labels.items():
        for k, y in enumerate(values):
            item = ExternalItem(f"{k}#{observation}", f"img{k}", (f"{k}.jpg",), "Yes" if y else "No", label=observation)
            items.append(item)
            answers[item.item_id] = ExternalAnswer(item.item_id, "", p_yes=p[observation][k])
    data = ExternalSet("chexpert", "presence", "valid", tuple(items), 4, Counter(), "fixture")
    scores = score_external(data, answers, resamples=30)
    m = {k: v.value for k, v in scores.metrics.items()}
    # Cardiomegaly: pos {.9, .4}, neg {.2, .6}: .9 > both, .4 > .2 -> 3/4; Edema: .7 above all three -> 1
    assert m["auroc[Cardiomegaly]"] == pytest.approx(0.75) and m["auroc[Edema]"] == pytest.approx(1.0)
    assert m["mean_auroc"] == pytest.approx(0.875)
    assert m["mean_auroc_competition5"] == pytest.approx(0.875)  # both are competition observations
    # F1 at 0.5: Cardiomegaly predicted {0, 3}: tp 1, fp 1, fn 1 -> 0.5
    assert m["f1@0.5[Cardiomegaly]"] == pytest.approx(0.5)
    assert scores.baseline["auroc[Cardiomegaly]"].value == pytest.approx(0.5)
    assert "majority" in scores.baseline_name
    table = format_external_table(scores)
    assert "auroc[Cardiomegaly]" in table and "0.750 [" in table


def test_report_metrics_equal_sacrebleu_and_pycocoevalcap():
    sacrebleu = pytest.importorskip("sacrebleu")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    references = ["the heart is normal in size . the lungs are clear", "large right pleural effusion is present",
                  "no pneumothorax . mild cardiomegaly", "the lungs are clear without focal consolidation"]
    hypotheses = ["the heart is normal . lungs are clear", "there is a right pleural effusion",
                  "mild cardiomegaly without pneumothorax", "the lungs are clear"]
    items = tuple(ExternalItem(str(k), str(k), ("x.png",), r) for k, r in enumerate(references))
    data = ExternalSet("iu-xray", "report", "test", items, 4, Counter(), "fixture")
    answers = {str(k): ExternalAnswer(str(k), h) for k, h in enumerate(hypotheses)}
    scores = score_external(data, answers, resamples=20, meteor=False)
    m = {k: v.value for k, v in scores.metrics.items()}
    hyp = [" ".join(h.replace(" .", "").split()) for h in hypotheses]
    ref = [" ".join(r.replace(" .", "").split()) for r in references]
    bleu = sacrebleu.corpus_bleu(hyp, [ref], tokenize="none", smooth_method="none")
    assert m["bleu_4"] == pytest.approx(bleu.score / 100, abs=1e-9)
    assert m["bleu_1"] == pytest.approx(bleu.precisions[0] / 100 * bleu.bp, abs=1e-9)
    gts = {k: [r] for k, r in enumerate(ref)}
    res = {k: [h] for k, h in enumerate(hyp)}
    assert m["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-6)
    assert m["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert "meteor" not in m and scores.unavailable["meteor"].startswith("not computed")
    for name in ("chexbert_f1", "radgraph_f1", "bertscore_f1", "green"):
        assert scores.unavailable[name].startswith("not available offline")
    assert scores.baseline_name == "constant normal report" and "bleu_4" in scores.baseline
    same = score_external(data, {str(k): ExternalAnswer(str(k), r) for k, r in enumerate(references)}, resamples=0,
                          meteor=False)
    assert same.metrics["ce_micro_f1"].value == pytest.approx(1.0) and same.metrics["bleu_4"].value == pytest.approx(1.0)
    assert "not available offline" in format_external_table(scores)
