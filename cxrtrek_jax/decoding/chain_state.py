"""The explicit state of a staged conversation: everything decoding carries between turns.

A `ChainState` is a pytree (`flax.struct.dataclass`) passed into and returned
by the pure step functions of `stepwise.py`; nothing lives in hidden module
state. Shapes: B studies decoded together, S cache slots, M image slots,
N tokens per image, E text width, V vocabulary, A answer-token capacity
(the most tokens one answer may take), T turn capacity (the most turns the
record keeps).

Slot layout per sample: slots 0..length-1 of the KV cache hold the sample's
conversation so far (its valid context, written contiguously from slot 0;
token positions equal slot numbers). Slots at or beyond `length` hold stale
entries of a rewound turn or chunk padding; no query ever attends to them
(attention is causal by slot, and a new token overwrites its slot before it
is read).
"""

from __future__ import annotations

import enum

import flax.struct
import jax

from cxrtrek_jax.model.kv_cache import KV_AXES, SLOT_AXES, KVCache

__all__ = ["StopReason", "ChainState", "state_logical_axes"]


class StopReason(enum.IntEnum):
    """Why a sample's answer of one turn ended (stored as int32 in the state)."""

    NOT_ASKED = 0      # no question for this sample in this turn (its study has fewer turns)
    END_OF_TURN = 1    # the model produced the end-of-turn token
    MAX_NEW_TOKENS = 2  # the token budget ran out; an end-of-turn token was appended to close the turn
    CACHE_FULL = 3     # the question or the answer did not fit in the cache: the sample stopped here
    IN_PROGRESS = 4    # asked, still answering (never left in the record)

    @property
    def label(self) -> str:
        """The name written to predictions files, e.g. "end_of_turn"."""
        return self.name.lower()


@flax.struct.dataclass
class ChainState:
    """The decoding state of B conversations.

    cache: the per-layer KV cache (`KVCache`: k, v tuples of [B, S, kv_heads,
        head_dim], slot segment ids int32[B, S], image tokens consumed
        int32[B]).
    image_features: [B, M, N, E] projected features of every image slot,
        computed once by `start`; image tokens in later chunks take them in order.
    image_mask: bool[B, M], False for absent image slots.
    length: int32[B], the write position: slots 0..length-1 are the valid
        context, the next token goes to slot `length` (also its position).
    prompt_length: int32[B], `length` right after `start` (the system
        prompt): the earliest point a rewind may go back to.
    answer_start: int32[B], `length` when the current answer began.
    stage: int32[B], the diagnostic stage (1..8) of the current question, 0 before any.
    done: bool[B], the sample's current answer is finished (or was never asked).
    stop_reason: int32[B], `StopReason` of the current answer.
    overflowed: bool[B], the cache ran full: the sample takes no further
        questions until it is rewound.
    next_logits: float32[B, V], the logits for the token after slot length-1.
    tokens: int32[B, A], the tokens generated in the current turn (end-of-turn
        included), padded with the pad id.
    num_tokens: int32[B], how many entries of `tokens` are generated.
    constrained: bool[B], the current answer is decoded under the box grammar
        (`data_pipeline.text.box_grammar`; set by `ask` for detection turns).
    box_registers: int32[B, 4], the grammar's registers of the current answer (its state,
        the number being written, x1, y1; all 0 when the answer starts).
    rng: the PRNG key for sampling (split at every decoding step).
    turn: int32[], turns answered so far (answer calls on the batch); the record row of the
        next answer. With rows re-used by `admit_step` (continuous batching) a row's record
        then mixes studies; chains read each turn's `tokens` instead.
    answers: int32[B, T, A], the record: generated tokens of every answered turn.
    answer_lengths: int32[B, T], entries of `answers` generated per turn.
    answer_stages: int32[B, T], the stage of each recorded turn.
    stop_reasons: int32[B, T], the `StopReason` of each recorded turn.
    """

    cache: KVCache
    image_features: jax.Array
    image_mask: jax.Array
    length: jax.Array
    prompt_length: jax.Array
    answer_start: jax.Array
    stage: jax.Array
    done: jax.Array
    stop_reason: jax.Array
    overflowed: jax.Array
    next_logits: jax.Array
    tokens: jax.Array
    num_tokens: jax.Array
    constrained: jax.Array
    box_registers: jax.Array
    rng: jax.Array
    turn: jax.Array
    answers: jax.Array
    answer_lengths: jax.Array
    answer_stages: jax.Array
    stop_reasons: jax.Array

    @property
    def batch_size(self) -> int:
        return self.length.shape[0]

    @property
    def cache_length(self) -> int:
        """S, the cache capacity in tokens per sample."""
        return self.cache.max_length

    @property
    def answer_capacity(self) -> int:
        """A, the most tokens one answer can hold."""
        return self.tokens.shape[1]

    @property
    def turn_capacity(self) -> int:
        """T, the most turns the record keeps."""
        return self.answers.shape[1]


def state_logical_axes(state: ChainState) -> ChainState:
    """A `ChainState` whose leaves are tuples of logical axis names (None = replicated).

    KV arrays use `KV_AXES` (batch, cache_length, kv_heads, head_dim), the
    slot record `SLOT_AXES`; per-sample arrays are split over "batch"; the
    image features' width is "embed"; the PRNG key and turn counter are replicated.
    """
    def per_sample(x: jax.Array) -> tuple[str | None, ...]:
        return ("batch",) + (None,) * (x.ndim - 1)

    axes = jax.tree.map(per_sample, state)
    cache = KVCache(
        k=tuple(KV_AXES for _ in state.cache.k),
        v=tuple(KV_AXES for _ in state.cache.v),
        segment_ids=SLOT_AXES,
        image_tokens_seen=("batch",),
    )
    return axes.replace(
        cache=cache,
        image_features=("batch", None, None, "embed"),
        rng=None,
        turn=None,
    )
