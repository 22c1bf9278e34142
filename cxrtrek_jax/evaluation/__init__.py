"""Evaluating CXRTrek models: decode a checkpoint, score its predictions, compare with baselines.

    from cxrtrek_jax import evaluation
    data = evaluation.EvalData("cxrtrek.json", split="test")
    result = evaluation.evaluate_checkpoint("runs/x/checkpoints", data, "runs/x/eval",
                                            baseline=evaluation.EvalData("cxrtrek.json", split="train"))

`evaluate_checkpoint` (module `evaluate`) is the one decode -> score -> baseline -> write
function (`cxrtrek eval`, the ablations and the demo call it); `score_predictions` re-scores a
saved predictions file. Modules: `predictions` (the JSONL record contract), `model_eval`
(decoding a checkpoint over a split), `answer_parsing`, `detection_metrics`, `nlg_metrics`,
`chexpert_labeller` (+ `labeller_rules/`), `clinical_efficacy`, `families` (statistics per item
kind), `bootstrap`, `error_propagation`, `answer_baselines`, `image_reliance`, `scoring`
(`score_predictions`), `tables` (metrics.md), `stage_chart` (stages.png) and `outputs`
(`write_metrics`).
"""

from cxrtrek_jax.evaluation.evaluate import EvaluationResult, evaluate_checkpoint, evaluation_inputs, is_current
from cxrtrek_jax.evaluation.model_eval import EvalData, decode_predictions
from cxrtrek_jax.evaluation.predictions import PredictionRecord, read_predictions
from cxrtrek_jax.evaluation.scoring import ScoringConfig, score_predictions

__all__ = [
    "EvaluationResult", "evaluate_checkpoint", "evaluation_inputs", "is_current",
    "EvalData", "decode_predictions",
    "PredictionRecord", "read_predictions",
    "ScoringConfig", "score_predictions",
]
