"""Metric families: what each kind of item contributes and the metrics computed from it.

Every scored item adds a fixed-width statistics vector to the families it
belongs to (a closed-ended item to "closed", a multi-choice item also to
"multi_choice", a report to "nlg" and "clinical_efficacy", ...). Metrics
are functions of the *summed* vectors, so the value for any set of items
(a stage, a task type, a bootstrap replicate) comes from sums alone. The
first statistic of every family is the item count "n".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from cxrtrek_jax.evaluation.metrics.clinical_efficacy import CE_STAT_NAMES, ce_metrics
from cxrtrek_jax.evaluation.metrics.nlg_metrics import BLEU_MAX_ORDER, BLEU_STAT_NAMES, bleu_from_statistics

__all__ = ["MetricFamily", "build_families", "HEADLINE_METRICS", "LOWER_IS_BETTER"]

# Metrics compared across context modes and drawn in the stage chart.
HEADLINE_METRICS = (
    "accuracy",
    "multi_option_f1",
    "mean_iou",
    "acc_iou50",
    "bleu_1",
    "bleu_4",
    "rouge_l",
    "meteor",
    "cider",
    "ce_micro_f1",
    "ce_macro_f1",
    "ce5_micro_f1",
)
LOWER_IS_BETTER = frozenset({"closed_unparseable_rate", "detection_unparseable_rate"})


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


@dataclasses.dataclass(frozen=True)
class MetricFamily:
    """A statistics layout (`stat_names`, "n" first) and its metrics (sums[..., W] -> {name: [...]})."""

    name: str
    stat_names: tuple[str, ...]
    compute: Callable[[np.ndarray], dict[str, np.ndarray]]

    @property
    def width(self) -> int:
        return len(self.stat_names)

    def vector(self, values: Mapping[str, float]) -> np.ndarray:
        """A statistics vector from named values; every name must be given ("n" defaults to 1)."""
        values = {"n": 1.0, **values}
        missing = [s for s in self.stat_names if s not in values]
        extra = [s for s in values if s not in self.stat_names]
        if missing or extra:
            raise ValueError(f"{self.name} statistics: missing {missing}, unknown {extra}")
        return np.array([values[s] for s in self.stat_names], np.float64)

    def metrics(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return self.compute(np.asarray(sums, np.float64))


def _closed(s: np.ndarray) -> dict[str, np.ndarray]:
    return {"accuracy": _ratio(s[..., 1], s[..., 0]), "closed_unparseable_rate": _ratio(s[..., 2], s[..., 0])}


def _multi_choice(s: np.ndarray) -> dict[str, np.ndarray]:
    tp, fp, fn = s[..., 1], s[..., 2], s[..., 3]
    return {
        "multi_option_precision": _ratio(tp, tp + fp),
        "multi_option_recall": _ratio(tp, tp + fn),
        "multi_option_f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _detection(s: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "mean_iou": _ratio(s[..., 2], s[..., 1]),
        "acc_iou50": _ratio(s[..., 3], s[..., 1]),
        "detection_unparseable_rate": _ratio(s[..., 4], s[..., 0]),
    }


def _nlg(with_meteor: bool) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    bleu = slice(1, 1 + len(BLEU_STAT_NAMES))
    rouge, meteor, cider = (1 + len(BLEU_STAT_NAMES) + i for i in range(3))

    def compute(s: np.ndarray) -> dict[str, np.ndarray]:
        n = s[..., 0]
        out = {f"bleu_{k}": np.where(n > 0, bleu_from_statistics(s[..., bleu], k), np.nan)
               for k in range(1, BLEU_MAX_ORDER + 1)}
        out["rouge_l"] = _ratio(s[..., rouge], n)
        if with_meteor:
            out["meteor"] = _ratio(s[..., meteor], n)
        out["cider"] = _ratio(s[..., cider], n)
        return out

    return compute


def _clinical_efficacy(s: np.ndarray) -> dict[str, np.ndarray]:
    defined = s[..., 0] > 0
    return {name: np.where(defined, value, np.nan) for name, value in ce_metrics(s[..., 1:]).items()}


def build_families(with_meteor: bool) -> dict[str, MetricFamily]:
    """The metric families by name; METEOR is in "nlg" only when it is computed."""
    families = [
        MetricFamily("closed", ("n", "correct", "unparseable"), _closed),
        MetricFamily("multi_choice", ("n", "tp", "fp", "fn"), _multi_choice),
        MetricFamily("detection", ("n", "pairs", "iou_sum", "hits", "unparseable"), _detection),
        MetricFamily("nlg", ("n", *BLEU_STAT_NAMES, "rouge_l", "meteor", "cider"), _nlg(with_meteor)),
        MetricFamily("clinical_efficacy", ("n", *CE_STAT_NAMES), _clinical_efficacy),
    ]
    return {f.name: f for f in families}
