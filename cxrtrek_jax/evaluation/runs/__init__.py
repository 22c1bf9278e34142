"""Evaluation layer 3, runs: decode a checkpoint over a data set, then score it beside the baseline.

Modules: `model_eval` (`EvalData`, decoding in the context modes), `evaluate`
(`evaluate_checkpoint`, the one decode -> score -> baseline -> write function) and `external_eval`
(`evaluate_external`: a checkpoint on a public set, IU X-Ray ... SLAKE, scored as its community does).
"""

from cxrtrek_jax.evaluation.runs.evaluate import EvaluationResult, evaluate_checkpoint, evaluation_inputs, is_current
from cxrtrek_jax.evaluation.runs.external_eval import ExternalResult, evaluate_external
from cxrtrek_jax.evaluation.runs.model_eval import EvalData, decode_predictions

__all__ = ["EvaluationResult", "evaluate_checkpoint", "evaluation_inputs", "is_current", "EvalData",
           "decode_predictions", "ExternalResult", "evaluate_external"]
