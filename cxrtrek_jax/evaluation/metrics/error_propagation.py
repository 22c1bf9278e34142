"""Error propagation across CXRTrek's stages.

Two views:
- Context modes compared per stage (paired study bootstrap): how much a
  stage gains from correct context ("context_gain" = teacher - none) and how
  much of that it loses when the context is the model's own answers
  ("own_context_loss" = teacher - own); "own_context_gain" = own - none is
  the net effect of running the stages in sequence on the model's answers.
- First errors traced per study: the first stage (in stage order, 1..8)
  whose closed-ended answer is wrong (or unparseable), and the closed-ended
  accuracy of each stage for studies with and without a wrong closed-ended
  answer at an earlier stage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cxrtrek_jax.evaluation.metrics.bootstrap import percentile_interval
from data_pipeline.schema.stages import STAGE_NUMBERS

__all__ = ["COMPARISONS", "StageOutcomes", "compare_contexts"]

# name -> (minuend context, subtrahend context)
COMPARISONS = {
    "context_gain": ("teacher", "none"),
    "own_context_loss": ("teacher", "own"),
    "own_context_gain": ("own", "none"),
}


class StageOutcomes:
    """Closed-ended outcomes per (context, study, stage): counts of answers and of wrong answers."""

    def __init__(self) -> None:
        self._wrong_stages: dict[tuple[str, int], set[int]] = {}
        self._answered: dict[str, set[int]] = {}

    def add(self, context: str, study: int, stage: int, correct: bool) -> None:
        self._answered.setdefault(context, set()).add(study)
        wrong = self._wrong_stages.setdefault((context, study), set())
        if not correct:
            wrong.add(stage)

    def first_error_stage(self, context: str, study: int) -> int | None:
        wrong = self._wrong_stages.get((context, study))
        return min(wrong) if wrong else None

    def had_error_before(self, context: str, study: int, stage: int) -> bool:
        first = self.first_error_stage(context, study)
        return first is not None and first < stage

    def first_error_distribution(self, context: str) -> dict[str, int]:
        """Studies with closed-ended answers, by first wrong stage ("1".."8") or "none"."""
        counts = {str(s): 0 for s in STAGE_NUMBERS} | {"none": 0}
        for study in self._answered.get(context, ()):
            first = self.first_error_stage(context, study)
            counts["none" if first is None else str(first)] += 1
        return counts


def compare_contexts(
    values: Mapping[str, Mapping[str, float | None]],
    replicates: Mapping[str, Mapping[str, np.ndarray]],
    confidence: float,
) -> dict[str, dict[str, dict]]:
    """Paired differences between context modes for one group.

    values[context][metric]: point values; replicates[context][metric]:
    bootstrap replicates drawn with shared study weights (missing when no
    bootstrap was run: the interval is then None). Returns
    {metric: {comparison: {"value", "ci"}}} for metrics present in both
    contexts of a comparison.
    """
    out: dict[str, dict[str, dict]] = {}
    for name, (a, b) in COMPARISONS.items():
        if a not in values or b not in values:
            continue
        for metric in values[a]:
            va, vb = values[a].get(metric), values[b].get(metric)
            if va is None or vb is None:
                continue
            reps_a, reps_b = replicates.get(a, {}).get(metric), replicates.get(b, {}).get(metric)
            interval = None if reps_a is None or reps_b is None else percentile_interval(reps_a - reps_b, confidence)
            out.setdefault(metric, {})[name] = {
                "value": va - vb,
                "ci": None if interval is None else list(interval),
            }
    return out
