"""Staged decoding: the explicit chain state, step functions, sampling, chains and the question script.

    spec = DecodeSpec.for_model(cfg, tokenizer, cache_length=2048, max_answer_tokens=128)
    decoder = StepwiseDecoder(graphdef, cfg, spec)
    results = run_chain(decoder, params, tokenizer, studies, context="own", max_new_tokens=128)
"""

from cxrtrek_jax.decoding.chain import ChainStudy, TurnResult, load_study_images, run_chain, stream_chain
from cxrtrek_jax.decoding.chain_state import ChainState, StopReason, state_logical_axes
from cxrtrek_jax.decoding.question_script import default_script, says_yes
from cxrtrek_jax.decoding.reference_decoder import ReferenceDecoder, ReferenceTurn
from cxrtrek_jax.decoding.sampling import GREEDY, SamplingConfig, filter_logits, sample_tokens
from cxrtrek_jax.decoding.stepwise import (
    DecodeSpec,
    StepwiseDecoder,
    admit_step,
    answer_step,
    ask_step,
    param_shardings,
    rewind_step,
    start_step,
)
from cxrtrek_jax.decoding.turn_plans import ORDERS, Turn, TurnPlan, fixed_plan, study_turns

__all__ = [
    "ChainStudy", "TurnResult", "load_study_images", "run_chain", "stream_chain",
    "ChainState", "StopReason", "state_logical_axes",
    "default_script", "says_yes",
    "ReferenceDecoder", "ReferenceTurn",
    "GREEDY", "SamplingConfig", "filter_logits", "sample_tokens",
    "DecodeSpec", "StepwiseDecoder", "admit_step", "answer_step", "ask_step", "param_shardings", "rewind_step", "start_step",
    "ORDERS", "Turn", "TurnPlan", "fixed_plan", "study_turns",
]
