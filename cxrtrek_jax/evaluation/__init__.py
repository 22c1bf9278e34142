"""Evaluating CXRTrek models: decode a checkpoint, score its predictions, compare with baselines.

    from cxrtrek_jax import evaluation
    data = evaluation.EvalData("cxrtrek.json", split="test")
    result = evaluation.evaluate_checkpoint("runs/x/checkpoints", data, "runs/x/eval",
                                            baseline=evaluation.EvalData("cxrtrek.json", split="train"))

`evaluate_checkpoint` is the one decode -> score -> baseline -> write function (`cxrtrek eval`,
the ablations and the demo call it); `score_predictions` re-scores a saved predictions file.
Sub-packages by layer, each importing only the ones before it: `metrics` (pure metric functions),
`scores` (prediction files -> metrics, tables, charts, the blind baseline) and `runs` (decoding a
checkpoint over a split, then scoring it).
"""

from cxrtrek_jax.evaluation.runs import EvalData, EvaluationResult, decode_predictions, evaluate_checkpoint, evaluation_inputs, is_current
from cxrtrek_jax.evaluation.scores import PredictionRecord, ScoringConfig, read_predictions, score_predictions

__all__ = [
    "EvaluationResult", "evaluate_checkpoint", "evaluation_inputs", "is_current",
    "EvalData", "decode_predictions",
    "PredictionRecord", "read_predictions",
    "ScoringConfig", "score_predictions",
]
