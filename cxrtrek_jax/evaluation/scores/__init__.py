"""Evaluation layer 2, scores: prediction files -> the metrics dictionary, tables and charts.

Modules: `predictions` (the JSONL record contract), `scoring` (`score_predictions`),
`answer_baselines` (the blind majority-answer baseline), `tables` (metrics.md), `stage_chart`
(stages.png), `outputs` (`write_metrics`) and `external_scores` (a public set's answers -> its
community's metrics with intervals and the blind baseline).
"""

from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, read_predictions
from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig, score_predictions

__all__ = ["PredictionRecord", "read_predictions", "ScoringConfig", "score_predictions"]
