"""BLEU, ROUGE-L, CIDEr-D and METEOR against hand-computed values and reference implementations."""

import math

import numpy as np
import pytest

from cxrtrek_jax.evaluation.metrics.nlg_metrics import (
    CiderD,
    MeteorScorer,
    bleu_from_statistics,
    bleu_statistics,
    meteor_unavailable_reason,
    nlg_tokens,
    rouge_l,
)

HYPS = [
    "The heart size is normal.",
    "No pleural effusion or pneumothorax is seen.",
    "There is a small left pleural effusion.",
    "Lungs are clear.",
    "Cardiomegaly.",
    "",
]
REFS = [
    "Heart size is normal and the lungs are clear.",
    "No pleural effusion or pneumothorax.",
    "Small left pleural effusion is present.",
    "The lungs are clear without consolidation.",
    "Mild cardiomegaly, 2.5 cm nodule.",
    "No acute process.",
]


def test_nlg_tokens():
    assert nlg_tokens("Mild cardiomegaly, 2.5 cm nodule; X-ray (AP).") == (
        "mild", "cardiomegaly", "2.5", "cm", "nodule", "x", "ray", "ap",
    )
    assert nlg_tokens("...") == ()


def test_bleu_hand_computed():
    hyp, ref = nlg_tokens("the cat sat on the mat"), nlg_tokens("the cat sat on a mat")
    stats = bleu_statistics(hyp, ref)
    # clipped matches 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    np.testing.assert_array_equal(stats, [5, 3, 2, 1, 6, 5, 4, 3, 6, 6])
    assert bleu_from_statistics(stats, 1) == pytest.approx(5 / 6)
    assert bleu_from_statistics(stats, 4) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # A 3-word hypothesis against a 6-word reference: brevity penalty exp(1 - 6/3).
    short = bleu_statistics(nlg_tokens("the cat sat"), ref)
    assert bleu_from_statistics(short, 2) == pytest.approx(math.exp(1 - 6 / 3))
    # No 4-gram match: BLEU-4 is 0 (no smoothing); an empty hypothesis scores 0.
    assert bleu_from_statistics(short, 4) == 0.0
    assert bleu_from_statistics(bleu_statistics((), ref), 1) == 0.0


def test_corpus_bleu_equals_sacrebleu():
    from sacrebleu.metrics import BLEU

    hyps = [nlg_tokens(h) for h in HYPS]
    refs = [nlg_tokens(r) for r in REFS]
    total = sum(bleu_statistics(h, r) for h, r in zip(hyps, refs))
    for order in range(1, 5):
        sacre = BLEU(tokenize="none", smooth_method="none", max_ngram_order=order, effective_order=False)
        expected = sacre.corpus_score([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]]).score / 100
        assert bleu_from_statistics(total, order) == pytest.approx(expected, abs=1e-12)


def test_bleu_statistics_vectorised_over_replicates():
    stats = np.stack([bleu_statistics(nlg_tokens(h), nlg_tokens(r)) for h, r in zip(HYPS, REFS)])
    weights = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 1, 0, 3, 0]], np.float64)
    batched = bleu_from_statistics(weights @ stats, 2)
    assert batched.shape == (2,)
    assert batched[1] == pytest.approx(bleu_from_statistics(weights[1] @ stats, 2))
    with pytest.raises(ValueError, match="order"):
        bleu_from_statistics(stats[0], 5)


def test_rouge_l_hand_computed():
    # LCS("a b c d", "a c d e f") = 3: P = 3/4, R = 3/5, F(beta=1.2) = (1+b^2)PR / (R + b^2 P).
    p, r, b2 = 3 / 4, 3 / 5, 1.2**2
    assert rouge_l("a b c d".split(), "a c d e f".split()) == pytest.approx((1 + b2) * p * r / (r + b2 * p))
    assert rouge_l(("x",), ("y",)) == 0.0
    assert rouge_l((), ("y",)) == 0.0


def test_cider_d_equals_coco_caption():
    from pycocoevalcap.cider.cider import Cider

    hyps = [nlg_tokens(h) for h in HYPS]
    refs = [nlg_tokens(r) for r in REFS]
    cider = CiderD()
    for r in refs:
        cider.add_reference(r)
    ours = [cider.score(h, r) for h, r in zip(hyps, refs)]
    _, theirs = Cider().compute_score(
        {i: [" ".join(r)] for i, r in enumerate(refs)}, {i: [" ".join(h)] for i, h in enumerate(hyps)}
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert cider.num_references == len(refs)


def test_cider_d_properties():
    cider = CiderD()
    with pytest.raises(RuntimeError, match="add_reference"):
        cider.score(("a",), ("a",))
    # An n-gram found in every reference has idf 0: identical corpora score 0.
    for _ in range(3):
        cider.add_reference(("no", "effusion"))
    assert cider.score(("no", "effusion"), ("no", "effusion")) == 0.0
    cider.add_reference(("small", "pneumothorax"))
    # Rare n-grams get weight; a perfect match of a 2-word text: 4 orders -> (1 + 1 + 0 + 0) / 4 * 10.
    assert cider.score(("small", "pneumothorax"), ("small", "pneumothorax")) == pytest.approx(5.0)


@pytest.mark.skipif(meteor_unavailable_reason() is not None, reason="METEOR needs java")
def test_meteor_hand_computed():
    with MeteorScorer() as meteor:
        assert "meteor-1.5.jar" in meteor.describe()
        scores = meteor.score(
            [nlg_tokens("the heart size is normal"), nlg_tokens("small left pleural effusion"), ("a", "b"), ()],
            [nlg_tokens("the heart size is normal"), nlg_tokens("small left pleural effusion is present"),
             ("c", "d"), ("c",)],
        )
        assert meteor.score([], []) == []
        with pytest.raises(ValueError, match="hypotheses"):
            meteor.score([("a",)], [])
    assert scores[0] == pytest.approx(1.0)
    # METEOR 1.5 (en): alpha 0.85, beta 0.2, gamma 0.6, delta 0.75; "is" is a function word.
    # Hypothesis: 4 content words, all matched -> P = 1. Reference: 5 content + 1 function word,
    # 4 content matched -> R = 0.75*4 / (0.75*5 + 0.25*1) = 0.75. One chunk over 4 matches.
    precision, recall = 1.0, 0.75
    fmean = precision * recall / (0.85 * precision + 0.15 * recall)
    penalty = 0.6 * (1 / 4) ** 0.2
    assert scores[1] == pytest.approx(fmean * (1 - penalty), abs=1e-9)
    assert scores[2] == 0.0 and scores[3] == 0.0
