"""An external set's answers -> its community's metrics, bootstrap intervals and the blind baseline.

    scores = score_external(data, answers, resamples=1000)
    print(format_external_table(scores))

Per task (`data_pipeline.external.external_items.TASKS`):
  report     BLEU-1..4 (corpus), ROUGE-L, METEOR (when java runs), CIDEr-D (`metrics.nlg_metrics`)
             and clinical efficacy (`metrics.clinical_efficacy`: the project's rule-based CheXpert
             labeller on both reports, uncertain as positive; micro / macro F1 over 14 observations
             and over the five common ones). Baseline: the constant normal report
             (`answer_baselines.NORMAL_FINDINGS`; the references are findings sections).
  presence   per-observation AUROC of P("Yes") (`ExternalAnswer.p_yes`), F1 at P >= 0.5; mean
             AUROC over the observations, and over CheXpert's five competition observations.
             Baseline: the majority answer per observation of the scored labels (a constant
             score: AUROC 0.5).
  detection  AP per class at IoU 0.4 (VinDr-CXR's protocol) and 0.5, mAP over the classes with a
             reference box (`metrics.detection_ap`), every predicted box scored alike. No blind
             baseline applies.
  vqa        closed accuracy, open recall and open exact match (`metrics.vqa_answers`). Baseline:
             the majority answer per answer type, fitted on the set's training file when given.
Metrics whose standard form needs a model downloaded from a hub (CheXbert, RadGraph, BERTScore,
GREEN for reports) are listed as not available offline; they are never estimated. BERTScore is
scored when the caller passes an encoder it has on disk (`metrics.bertscore.BertScorer`).

Intervals: the percentile bootstrap over groups (a study or an image: the items of a group are
resampled together, `metrics.bootstrap`), the same replicate weights for every metric and the
baseline. CIDEr-D keeps the document frequencies of the whole set in every replicate.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cxrtrek_jax.evaluation.metrics.auroc import auroc, binary_f1
from cxrtrek_jax.evaluation.metrics.bootstrap import bootstrap_weights, percentile_interval
from cxrtrek_jax.evaluation.metrics.clinical_efficacy import ce_item_statistics, ce_metrics
from cxrtrek_jax.evaluation.metrics.detection_ap import (
    DETECTION_IOUS, detections_by_class, mean_average_precision, weighted_ap,
)
from cxrtrek_jax.evaluation.metrics.nlg_metrics import (
    BLEU_MAX_ORDER, CiderD, MeteorScorer, bleu_from_statistics, bleu_statistics, meteor_unavailable_reason,
    nlg_tokens, rouge_l,
)
from cxrtrek_jax.evaluation.metrics.vqa_answers import closed_correct, exact_match, open_recall
from cxrtrek_jax.evaluation.scores.answer_baselines import NORMAL_FINDINGS
from data_pipeline.external.external_items import DETECTION, PRESENCE, REPORT, VQA, ExternalItem, ExternalSet
from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS, COMMON_FIVE, default_labeller
from data_pipeline.schema.boxes import Box, BoxParseError, parse_boxes

__all__ = ["DETECTION_IOUS", "OFFLINE_UNAVAILABLE", "ExternalAnswer", "Estimate", "ExternalScores",
           "score_external", "fit_vqa_majority", "format_external_table"]

# Standard report metrics that need weights from a model hub: never estimated here.
OFFLINE_UNAVAILABLE = {
    "chexbert_f1": "not available offline: needs the CheXbert labeller's weights (a hub download)",
    "radgraph_f1": "not available offline: needs the RadGraph model's weights (a hub download)",
    "bertscore_f1": "not available offline: needs an encoder's weights (a hub download; give a local one "
                    "with --bertscore-model)",
    "green": "not available offline: needs the GREEN model's weights (a hub download)",
}


@dataclasses.dataclass(frozen=True)
class ExternalAnswer:
    """The model's answer to one item: the decoded text; for presence P("Yes") against "No" at
    the first answer token; for detection the original image's (height, width) in pixels."""

    item_id: str
    answer: str
    p_yes: float | None = None
    image_size: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A metric's value on the whole set and its bootstrap interval (None: undefined in too many replicates)."""

    value: float
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, float | None]:
        clean = lambda v: None if v is None or np.isnan(v) else round(float(v), 6)  # noqa: E731
        return {"value": clean(self.value), "low": clean(self.low), "high": clean(self.high)}


@dataclasses.dataclass(frozen=True)
class ExternalScores:
    """metrics and baseline: name -> Estimate (the baseline holds the metrics it applies to);
    baseline_name: what the baseline is ("" when none applies); unavailable: name -> why;
    counts: items scored, groups, and task-specific counts (unparseable answers, ...)."""

    set_name: str
    task: str
    metrics: dict[str, Estimate]
    baseline: dict[str, Estimate]
    baseline_name: str
    unavailable: dict[str, str]
    counts: dict[str, int]
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"set": self.set_name, "task": self.task, "confidence": self.confidence,
                "metrics": {k: v.to_json() for k, v in self.metrics.items()},
                "baseline": {"name": self.baseline_name, "metrics": {k: v.to_json() for k, v in self.baseline.items()}},
                "not_available_offline": dict(self.unavailable), "counts": dict(self.counts)}


# A metric of the whole set under item weights (None = every item once).
MetricFn = Callable[[np.ndarray | None], float]


def _estimates(fns: Mapping[str, MetricFn], group_index: np.ndarray, num_groups: int, resamples: int, seed: int,
               confidence: float) -> dict[str, Estimate]:
    values = {name: fn(None) for name, fn in fns.items()}
    replicates: dict[str, list[float]] = {name: [] for name in fns}
    for chunk in bootstrap_weights(num_groups, resamples, seed):
        for row in chunk:
            item_weights = row[group_index]
            for name, fn in fns.items():
                replicates[name].append(fn(item_weights))
    out = {}
    for name, value in values.items():
        interval = percentile_interval(np.asarray(replicates[name]), confidence) if resamples else None
        out[name] = Estimate(value, *(interval or (None, None)))
    return out


def _weighted_mean(values: np.ndarray) -> MetricFn:
    def fn(w: np.ndarray | None) -> float:
        if w is None:
            return float(np.mean(values)) if len(values) else float("nan")
        total = w.sum()
        return float(w @ values / total) if total > 0 else float("nan")
    return fn


def _mean_defined(values: Sequence[float]) -> float:
    """The mean of the non-NaN values; NaN when there are none."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _sums(stats: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    return stats.sum(axis=0) if w is None else w @ stats


# ----------------------------------------------------------------------------- reports


def _report_fns(references: Sequence[str], hypotheses: Sequence[str], meteor: MeteorScorer | None,
                cider: CiderD, bertscore: Any = None) -> dict[str, MetricFn]:
    refs = [nlg_tokens(t) for t in references]
    hyps = [nlg_tokens(t) for t in hypotheses]
    bleu = np.stack([bleu_statistics(h, r) for h, r in zip(hyps, refs)])
    labeller = default_labeller()
    ce = np.stack([ce_item_statistics(labeller, r, h)[0] for r, h in zip(references, hypotheses)])
    fns: dict[str, MetricFn] = {
        f"bleu_{n}": (lambda w, n=n: float(bleu_from_statistics(_sums(bleu, w), n))) for n in range(1, BLEU_MAX_ORDER + 1)
    }
    fns["rouge_l"] = _weighted_mean(np.array([rouge_l(h, r) for h, r in zip(hyps, refs)]))
    if meteor is not None:
        fns["meteor"] = _weighted_mean(np.array(meteor.score(hyps, refs)))
    fns["cider_d"] = _weighted_mean(np.array([cider.score(h, r) for h, r in zip(hyps, refs)]))
    if bertscore is not None:
        fns["bertscore_f1"] = _weighted_mean(bertscore.score(hypotheses, references)[:, 2])
    for name in ("ce_micro_f1", "ce_macro_f1", "ce5_micro_f1", "ce5_macro_f1"):
        fns[name] = lambda w, name=name: float(ce_metrics(_sums(ce, w))[name])
    return fns


# ----------------------------------------------------------------------------- presence


def _presence_fns(items: Sequence[ExternalItem], p_yes: np.ndarray) -> dict[str, MetricFn]:
    labels = np.array([item.reference == "Yes" for item in items])
    observation = np.array([item.label for item in items])
    fns: dict[str, MetricFn] = {}
    present = [o for o in CHEXPERT_OBSERVATIONS if np.any(observation == o)]

    def per(o: str, metric):
        mask = observation == o
        return lambda w: metric(p_yes[mask], labels[mask], None if w is None else w[mask])

    for o in present:
        fns[f"auroc[{o}]"] = per(o, auroc)
        fns[f"f1@0.5[{o}]"] = per(o, lambda p, y, w: binary_f1(p >= 0.5, y, w))

    def mean_auroc(names: Sequence[str]) -> MetricFn:
        parts = [fns[f"auroc[{o}]"] for o in names if f"auroc[{o}]" in fns]
        return lambda w: _mean_defined([f(w) for f in parts])

    fns["mean_auroc"] = mean_auroc(present)
    fns["mean_auroc_competition5"] = mean_auroc(COMMON_FIVE)
    return fns


def _presence_majority(items: Sequence[ExternalItem]) -> np.ndarray:
    """1.0 / 0.0 per item: the answer most scored items of its observation have ("No" on a tie)."""
    yes = Counter(item.label for item in items if item.reference == "Yes")
    total = Counter(item.label for item in items)
    return np.array([1.0 if yes[item.label] * 2 > total[item.label] else 0.0 for item in items])


# ----------------------------------------------------------------------------- detection


def _scaled(item: ExternalItem, size: tuple[int, int]) -> tuple[Box, ...]:
    """The item's pixel boxes on the 0-100 grid of an image of (height, width) pixels."""
    height, width = size
    return tuple(Box(b.class_name, b.x_min / width * 100, b.y_min / height * 100, b.x_max / width * 100,
                     b.y_max / height * 100) for b in item.boxes)


def _predicted_boxes(answer: str) -> tuple[tuple[Box, ...], bool]:
    """(every box of the answer whatever its label, whether the markup was malformed)."""
    try:
        return parse_boxes(answer), False
    except BoxParseError:
        return (), True


def _detection_fns(items: Sequence[ExternalItem], answers: Sequence[ExternalAnswer]) -> tuple[dict[str, MetricFn], int]:
    classes = sorted({item.label for item in items})
    fns: dict[str, MetricFn] = {}
    malformed = 0
    parsed = []
    for item, answer in zip(items, answers):
        if answer.image_size is None:
            raise ValueError(f"detection item {item.item_id!r}: no image size recorded with its answer")
        boxes, bad = _predicted_boxes(answer.answer)
        malformed += bad
        parsed.append((_scaled(item, answer.image_size), boxes))
    by_item = [{item.label: boxes} for item, boxes in zip(items, parsed)]  # the question's class: every box
    for threshold in DETECTION_IOUS:
        by_class = detections_by_class(by_item, threshold)

        def ap(name: str, w: np.ndarray | None, by_class=by_class) -> float:
            return weighted_ap(by_class[name], w)

        for name in classes:
            fns[f"ap@{threshold}[{name}]"] = lambda w, name=name, ap=ap: ap(name, w)
        fns[f"map@{threshold}"] = lambda w, ap=ap: mean_average_precision({n: ap(n, w) for n in classes})
    return fns, malformed


# ----------------------------------------------------------------------------- vqa


def fit_vqa_majority(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """answer_type -> its most frequent answer (compared as lower-cased tokens) among (answer_type, answer)."""
    counts: dict[str, Counter] = {}
    for answer_type, answer in pairs:
        counts.setdefault(answer_type, Counter())[" ".join(answer.lower().split())] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


def _vqa_fns(items: Sequence[ExternalItem], predictions: Sequence[str]) -> dict[str, MetricFn]:
    closed = np.array([item.answer_type == "closed" for item in items])
    correct = np.array([closed_correct(p, i.reference) for p, i in zip(predictions, items)], np.float64)
    recall = np.array([open_recall(p, i.reference) for p, i in zip(predictions, items)])
    exact = np.array([exact_match(p, i.reference) for p, i in zip(predictions, items)], np.float64)

    def masked(values: np.ndarray, mask: np.ndarray) -> MetricFn:
        mean = _weighted_mean(values[mask])
        return lambda w: mean(None if w is None else w[mask])

    fns: dict[str, MetricFn] = {}
    if closed.any():
        fns["closed_accuracy"] = masked(correct, closed)
    if (~closed).any():
        fns["open_recall"] = masked(recall, ~closed)
        fns["open_exact_match"] = masked(exact, ~closed)
    return fns


# ----------------------------------------------------------------------------- the set


def score_external(data: ExternalSet, answers: Mapping[str, ExternalAnswer], *, resamples: int = 1000,
                   seed: int = 0, confidence: float = 0.95, meteor: bool = True,
                   vqa_majority: Mapping[str, str] | None = None, bertscore: Any = None) -> ExternalScores:
    """Score the answers of every item of `data` (module docstring). answers: item_id -> answer
    (every item must have one); meteor: score METEOR (needs java; `MeteorUnavailable` otherwise);
    vqa_majority: answer_type -> the baseline's answer (`fit_vqa_majority`; None = fitted on the
    scored items' references); bertscore: a `metrics.bertscore.BertScorer` (an encoder on disk) to
    score BERTScore F1 with, None = listed as not available offline."""
    items = data.items
    if not items:
        raise ValueError(f"{data.name}: no item to score")
    missing = [item.item_id for item in items if item.item_id not in answers]
    if missing:
        raise ValueError(f"{data.name}: {len(missing)} item(s) without an answer, e.g. {missing[:3]}")
    ordered = [answers[item.item_id] for item in items]
    groups = {g: i for i, g in enumerate(dict.fromkeys(item.group for item in items))}
    group_index = np.array([groups[item.group] for item in items])
    counts = {"items": len(items), "groups": len(groups)}
    unavailable: dict[str, str] = {}
    baseline_fns: dict[str, MetricFn] = {}
    baseline_name = ""
    if data.task == REPORT:
        references = [item.reference for item in items]
        cider = CiderD()
        for reference in references:
            cider.add_reference(nlg_tokens(reference))
        scorer = None
        if meteor:
            scorer = MeteorScorer()
        else:
            unavailable["meteor"] = "not computed: " + (meteor_unavailable_reason() or "turned off (meteor=False)")
        try:
            fns = _report_fns(references, [a.answer for a in ordered], scorer, cider, bertscore)
            baseline_fns = _report_fns(references, [NORMAL_FINDINGS] * len(items), scorer, cider, bertscore)
        finally:
            if scorer is not None:
                scorer.close()
        baseline_name = "constant normal report"
        unavailable.update({k: v for k, v in OFFLINE_UNAVAILABLE.items() if k not in fns})
    elif data.task == PRESENCE:
        if any(a.p_yes is None for a in ordered):
            raise ValueError(f"{data.name}: a presence answer without its P(Yes)")
        fns = _presence_fns(items, np.array([a.p_yes for a in ordered]))
        baseline_fns = _presence_fns(items, _presence_majority(items))
        baseline_name = "majority answer per observation (of the scored labels)"
    elif data.task == DETECTION:
        fns, counts["malformed_box_answers"] = _detection_fns(items, ordered)
    elif data.task == VQA:
        fns = _vqa_fns(items, [a.answer for a in ordered])
        fitted = dict(vqa_majority) if vqa_majority is not None else fit_vqa_majority(
            (item.answer_type, item.reference) for item in items)
        baseline_fns = _vqa_fns(items, [fitted.get(item.answer_type, "") for item in items])
        where = "the training file" if vqa_majority is not None else "the scored items' references"
        baseline_name = f"majority answer per answer type (fitted on {where})"
        counts["closed"] = sum(item.answer_type == "closed" for item in items)
        counts["open"] = len(items) - counts["closed"]
    else:
        raise ValueError(f"unknown task {data.task!r}")
    metrics = _estimates(fns, group_index, len(groups), resamples, seed, confidence)
    baseline = _estimates(baseline_fns, group_index, len(groups), resamples, seed, confidence)
    return ExternalScores(data.name, data.task, metrics, baseline, baseline_name, unavailable, counts, confidence)


def _cell(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    if np.isnan(estimate.value):
        return "undefined"
    interval = "" if estimate.low is None else f" [{estimate.low:.3f}, {estimate.high:.3f}]"
    return f"{estimate.value:.3f}{interval}"


def format_external_table(scores: ExternalScores) -> str:
    """One table: metric, the model's value [interval], the baseline's value [interval]."""
    names = list(scores.metrics) + [n for n in scores.unavailable if n not in scores.metrics]
    width = max(len(n) for n in names)
    header = f"{'metric':<{width}}  {'model (' + format(scores.confidence, '.0%') + ' interval)':<28}  baseline"
    lines = [f"{scores.set_name} ({scores.task}): " + ", ".join(f"{k} {v}" for k, v in scores.counts.items()),
             f"baseline: {scores.baseline_name or 'none applies'}", header, "-" * len(header)]
    for name in names:
        if name in scores.metrics:
            lines.append(f"{name:<{width}}  {_cell(scores.metrics[name]):<28}  {_cell(scores.baseline.get(name))}")
        else:
            lines.append(f"{name:<{width}}  {scores.unavailable[name]}")
    return "\n".join(lines)
