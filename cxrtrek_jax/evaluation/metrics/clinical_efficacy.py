"""Clinical efficacy (CE): agreement of CheXpert labels between generated and reference reports.

Both reports of an item go through the same rule-based labeller
(`chexpert_labeller`); each of the 14 observations becomes a binary label.
Uncertain mentions count as positive by default (`uncertain_as_positive`),
the usual choice in CE reporting; blank and negative are negative. Per
observation the reference labels are the truth: tp / fp / fn are summed over
items, then
- micro precision, recall and F1 pool tp / fp / fn over observations;
- macro F1 averages the per-observation F1 over observations where it is
  defined (tp + fp + fn > 0: an observation absent from both sides of every
  item has no F1 and is left out rather than counted as 0);
- "ce5" restricts both to the five common observations (COMMON_FIVE).
"""

from __future__ import annotations

import numpy as np

from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS, COMMON_FIVE, ReportLabeller

__all__ = ["CE_STAT_NAMES", "ce_statistics", "ce_metrics", "ce_item_statistics"]

_NUM = len(CHEXPERT_OBSERVATIONS)
CE_STAT_NAMES = tuple(f"ce_{kind}[{o}]" for kind in ("tp", "fp", "fn") for o in CHEXPERT_OBSERVATIONS)
_FIVE = np.array([CHEXPERT_OBSERVATIONS.index(o) for o in COMMON_FIVE])


def ce_statistics(reference: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """tp / fp / fn per observation for one item: float64[42] (`CE_STAT_NAMES` layout).

    reference, predicted: bool[14] in CHEXPERT_OBSERVATIONS order.
    """
    reference = np.asarray(reference, bool)
    predicted = np.asarray(predicted, bool)
    if reference.shape != (_NUM,) or predicted.shape != (_NUM,):
        raise ValueError(f"CE labels must be bool[{_NUM}], got {reference.shape} and {predicted.shape}")
    tp = reference & predicted
    fp = ~reference & predicted
    fn = reference & ~predicted
    return np.concatenate([tp, fp, fn]).astype(np.float64)


def ce_item_statistics(
    labeller: ReportLabeller, reference: str, prediction: str, uncertain_as_positive: bool = True
) -> tuple[np.ndarray, list[str], list[str]]:
    """CE statistics of one report pair, and the positive observations of each side."""
    ref_vec = labeller.label(reference).positive_vector(uncertain_as_positive)
    pred_vec = labeller.label(prediction).positive_vector(uncertain_as_positive)
    names = np.array(CHEXPERT_OBSERVATIONS)
    return ce_statistics(ref_vec, pred_vec), names[ref_vec].tolist(), names[pred_vec].tolist()


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _macro(f1: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(f1)
    count = defined.sum(axis=-1)
    total = np.where(defined, f1, 0.0).sum(axis=-1)
    return _ratio(total, count.astype(np.float64))


def ce_metrics(stats: np.ndarray) -> dict[str, np.ndarray]:
    """CE metrics from summed statistics `stats[..., 42]` -> each [...] (NaN when undefined)."""
    stats = np.asarray(stats, np.float64)
    tp, fp, fn = stats[..., :_NUM], stats[..., _NUM : 2 * _NUM], stats[..., 2 * _NUM :]
    per_observation = _f1(tp, fp, fn)
    tp_sum, fp_sum, fn_sum = tp.sum(-1), fp.sum(-1), fn.sum(-1)
    tp5, fp5, fn5 = tp[..., _FIVE].sum(-1), fp[..., _FIVE].sum(-1), fn[..., _FIVE].sum(-1)
    out = {
        "ce_micro_precision": _ratio(tp_sum, tp_sum + fp_sum),
        "ce_micro_recall": _ratio(tp_sum, tp_sum + fn_sum),
        "ce_micro_f1": _f1(tp_sum, fp_sum, fn_sum),
        "ce_macro_f1": _macro(per_observation),
        "ce5_micro_f1": _f1(tp5, fp5, fn5),
        "ce5_macro_f1": _macro(per_observation[..., _FIVE]),
    }
    for i, observation in enumerate(CHEXPERT_OBSERVATIONS):
        out[f"ce_f1[{observation}]"] = per_observation[..., i]
    return out
