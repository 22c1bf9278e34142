"""Paired differences between two sets of scored predictions on the same turns, with study-bootstrap
intervals: a model with its own images against the same model with another study's images, one
recipe against another, a model against the blind baseline.

Two prediction records are paired when they answer the same turn (study id, turn index). Only turns
scored on both sides count. The difference `a - b` of a metric is computed from per-study sums
(`metrics.bootstrap`): each replicate draws the studies with replacement and recomputes both sides
from the same draw, so what the two sides share (a hard study, an easy one) cancels and the interval
is that of the difference itself, narrower than the two separate intervals suggest.

Metrics, each as metrics.json computes it over the same turns: "accuracy" (closed turns whose
`scores["correct"]` is True or False), "ce_micro_f1" (the CheXpert-label micro F1 of report turns
from `scores["ce_reference_positive"]` and `scores["ce_predicted_positive"]`, the scorer's per-turn
labels; `metrics.clinical_efficacy`), "mean_iou" (detection turns: IoU summed over box pairs over
pairs, from `scores["mean_iou"]` and `scores["pairs"]`), "rouge_l" (mean over the open turns scored
with `scores["rouge_l"]`) and "bleu_1".."bleu_4" (corpus BLEU over those turns, from each turn's
BLEU statistics recomputed from its prediction and reference as the scorer does). METEOR and CIDEr
are not: their corpus values do not decompose into per-turn sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from cxrtrek_jax.evaluation.metrics.bootstrap import StudyStats, bootstrap_weights, percentile_interval
from cxrtrek_jax.evaluation.metrics.clinical_efficacy import ce_metrics, ce_statistics
from cxrtrek_jax.evaluation.metrics.nlg_metrics import (
    BLEU_MAX_ORDER,
    BLEU_STAT_NAMES,
    bleu_from_statistics,
    bleu_statistics,
    nlg_tokens,
)
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS

__all__ = ["PAIRED_METRICS", "PairedDifference", "paired_difference"]

_BLEU = tuple(f"bleu_{k}" for k in range(1, BLEU_MAX_ORDER + 1))
PAIRED_METRICS = ("accuracy", "ce_micro_f1", "mean_iou", "rouge_l", *_BLEU)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """`a - b` of one metric over the turns both sides scored.

    a, b: the metric on each side over the paired turns (None when undefined there).
    ci: the study-bootstrap percentile interval of the difference at `confidence` (None without
        resamples or when undefined in every replicate).
    """

    metric: str
    turns: int
    studies: int
    a: float | None
    b: float | None
    ci: tuple[float, float] | None
    confidence: float

    @property
    def difference(self) -> float | None:
        return None if self.a is None or self.b is None else self.a - self.b

    @property
    def above_zero(self) -> bool:
        """Whether the whole interval lies above 0 (`a` better than `b` beyond resampling noise)."""
        return self.ci is not None and self.ci[0] > 0


def _turn_stats(record: PredictionRecord, metric: str) -> np.ndarray | None:
    """The record's statistics vector for `metric`, None when the turn is not scored for it."""
    scores = record.scores
    if metric == "accuracy":
        correct = scores.get("correct")
        return None if correct is None else np.array([float(bool(correct)), 1.0])
    if metric == "mean_iou":
        pairs = scores.get("pairs")
        return None if pairs is None else np.array([float(scores["mean_iou"]) * pairs, float(pairs)])
    if metric == "rouge_l" or metric in _BLEU:
        if "rouge_l" not in scores:
            return None
        if metric == "rouge_l":
            return np.array([float(scores["rouge_l"]), 1.0])
        return np.concatenate([[1.0], bleu_statistics(nlg_tokens(record.prediction), nlg_tokens(record.reference))])
    if "ce_reference_positive" not in scores:
        return None
    reference = np.isin(CHEXPERT_OBSERVATIONS, list(scores["ce_reference_positive"]))
    predicted = np.isin(CHEXPERT_OBSERVATIONS, list(scores["ce_predicted_positive"]))
    return ce_statistics(reference, predicted)


def _value(stats: np.ndarray, metric: str) -> np.ndarray:
    """The metric from summed statistics `stats[..., width]` -> [...] (NaN when undefined)."""
    if metric in ("accuracy", "mean_iou", "rouge_l"):  # [sum, count]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(stats[..., 1] > 0, stats[..., 0] / np.maximum(stats[..., 1], 1), np.nan)
    if metric in _BLEU:  # [turns, BLEU statistics]
        return np.where(stats[..., 0] > 0, bleu_from_statistics(stats[..., 1:], int(metric[-1])), np.nan)
    return ce_metrics(stats)["ce_micro_f1"]


def _width(metric: str) -> int:
    """Length of a turn's statistics vector for `metric`."""
    if metric in _BLEU:
        return 1 + len(BLEU_STAT_NAMES)
    return 3 * len(CHEXPERT_OBSERVATIONS) if metric == "ce_micro_f1" else 2


def _scored(records: Iterable[PredictionRecord], metric: str, select: Callable[[PredictionRecord], bool]
            ) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for record in records:
        if select(record):
            stats = _turn_stats(record, metric)
            if stats is not None:
                out[(record.study_id, record.turn_index)] = stats
    return out


def _as_float(value: np.ndarray) -> float | None:
    return None if np.isnan(value) else float(value)


def paired_difference(records_a: Iterable[PredictionRecord], records_b: Iterable[PredictionRecord], metric: str,
                      select: Callable[[PredictionRecord], bool] = lambda record: True, *,
                      resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> PairedDifference:
    """`metric` of side a minus side b over the turns `select` keeps and both sides scored (module
    docstring). ValueError for an unknown metric."""
    if metric not in PAIRED_METRICS:
        raise ValueError(f"paired metric must be one of {', '.join(PAIRED_METRICS)}, got {metric!r}")
    side_a, side_b = _scored(records_a, metric, select), _scored(records_b, metric, select)
    turns = sorted(side_a.keys() & side_b.keys())
    study_index = {study: i for i, study in enumerate(sorted({study for study, _ in turns}))}
    width = _width(metric)
    sums = StudyStats(2 * width)
    for turn in turns:
        sums.add(study_index[turn[0]], np.concatenate([side_a[turn], side_b[turn]]))
    total = sums.total()
    a, b = _value(total[:width], metric), _value(total[width:], metric)
    replicates = []
    if turns and resamples > 0:
        for weights in bootstrap_weights(len(study_index), resamples, seed):
            resampled = sums.resampled(weights)
            replicates.append(_value(resampled[:, :width], metric) - _value(resampled[:, width:], metric))
    interval = percentile_interval(np.concatenate(replicates), confidence) if replicates else None
    return PairedDifference(metric, len(turns), len(study_index), _as_float(a), _as_float(b), interval, confidence)
