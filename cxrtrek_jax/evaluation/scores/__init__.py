"""Evaluation layer 2, scores: prediction files -> the metrics dictionary, tables and charts.

Modules: `predictions` (the JSONL record contract), `scoring` (`score_predictions`),
`answer_baselines` (the blind majority-answer baseline), `tables` (metrics.md), `stage_chart`
(stages.png) and `outputs` (`write_metrics`).
"""

from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, read_predictions
from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig, score_predictions

__all__ = ["PredictionRecord", "read_predictions", "ScoringConfig", "score_predictions"]
