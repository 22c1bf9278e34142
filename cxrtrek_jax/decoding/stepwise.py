"""Step-wise decoding of staged conversations with the state passed explicitly.

Five pure functions carry a `ChainState` from turn to turn:

    state = start(params, images, image_mask, prompt_tokens, prompt_lengths, rng)
    state = ask(params, state, question_tokens, question_lengths, stages)
    state, tokens = answer(params, state, sampling, max_new_tokens, min_new_tokens)
    state = rewind(state, length, image_tokens_seen)
    state = admit(params, state, slots, images, image_mask, prompt_tokens, prompt_lengths)

`start` runs the vision tower once over every image slot and keeps the
projected features in the state, then prefills the prompt (bos + system
message). `ask` prefills the next chunk of the conversation (a user question,
possibly preceded by a reference answer) onto the existing cache; image
tokens in it take the stored features in order, so no stage ever re-encodes
the images or re-reads earlier stages. `answer` decodes inside
`jax.lax.while_loop` until every sample has produced its end-of-turn token or
spent its budget; the answer (with its end-of-turn) stays in the cache.
`rewind` moves the write position back to a point of the context (rolling
back an answer or a turn) without touching the cache contents. `admit` starts new
conversations in some rows of a running state (continuous batching: a row whose
chain has ended takes the next study).

`ask` and `answer` take a static `window`: they run on the cache cut to its first
`window` slots (`DecodeSpec.window`: S/8, S/4, S/2 or S), so a decoding step attends to
the filled part of the cache rather than the whole capacity; the caller picks a window
that holds every asked sample's context and answer (`StepwiseDecoder.turn` does).

`params` is the model's `nnx.State` (`nnx.split(model)`); the graph
definition is static and merged inside. `StepwiseDecoder` jits these
functions once per decoder and pads chunks on the host to a few bucket
lengths (`DecodeSpec.bucket`), so a whole chain compiles one `start` per
prompt bucket, one `ask` per chunk bucket and one `answer` per sampling
setting (each in up to four windows), and nothing after warm-up. The token budget is an
array argument. `StepwiseDecoder.turn` dispatches a whole turn (rewind, prefill, decoding)
without waiting on the device; the caller fetches the answers once.

Generated tokens are never control tokens that would corrupt the context:
the ids in `DecodeSpec.suppressed_ids` (the image token, bos, pad) are
never sampled, and the end-of-turn token is only produced when allowed
(`min_new_tokens`) or forced when the budget runs out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.decoding.chain_state import ChainState, StopReason, state_logical_axes
from cxrtrek_jax.decoding.sampling import SamplingConfig, sample_tokens
from cxrtrek_jax.model import CXRTrekNet, ModelConfig, axis_rules, backward_passes
from data_pipeline.text import box_grammar
from data_pipeline.text.box_grammar import BoxGrammar

__all__ = [
    "DecodeSpec",
    "StepwiseDecoder",
    "start_step",
    "ask_step",
    "answer_step",
    "rewind_step",
    "admit_step",
    "param_shardings",
]

_SUPPRESSED = -1e30


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The static shapes and token ids of a decoder.

    cache_length: S, KV-cache slots per sample (the longest conversation).
    max_answer_tokens: A, the most tokens one answer may take (end-of-turn included).
    max_turns: T, the most turns the state's answer record keeps.
    end_of_turn_id: the token that closes a turn.
    pad_id: the id used to pad token arrays (never attended to).
    suppressed_ids: ids never generated (the image token, bos, pad, ...).
    vocab_limit: ids at or above it are never generated (the model's
        vocabulary padding beyond the tokenizer's ids); None = no limit.
    min_bucket: chunk lengths are padded to min_bucket * 2**k (capped at S).
    """

    cache_length: int
    max_answer_tokens: int
    max_turns: int
    end_of_turn_id: int
    pad_id: int
    suppressed_ids: tuple[int, ...] = ()
    vocab_limit: int | None = None
    min_bucket: int = 16

    def __post_init__(self) -> None:
        for name in ("cache_length", "max_answer_tokens", "max_turns", "min_bucket"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DecodeSpec.{name} must be a positive integer, got {value!r}")
        if self.end_of_turn_id in self.suppressed_ids or (
                self.vocab_limit is not None and self.end_of_turn_id >= self.vocab_limit):
            raise ValueError(f"DecodeSpec: the end-of-turn id {self.end_of_turn_id} cannot be suppressed")

    def bucket(self, length: int) -> int:
        """The padded length of a chunk of `length` tokens: min_bucket * 2**k, at most S."""
        size = self.min_bucket
        while size < length:
            size *= 2
        return min(size, self.cache_length)

    def window(self, length: int) -> int:
        """The cache prefix a step attends to when no sample reaches past slot `length`: the
        smallest of S/8, S/4, S/2 (rounded up to min_bucket) and S that holds `length` slots.
        Four sizes at most, so a chain compiles few shapes and a short conversation does not
        pay for the whole capacity at every decoding step."""
        for parts in (8, 4, 2):
            size = -(-self.cache_length // parts // self.min_bucket) * self.min_bucket
            if length <= size < self.cache_length:
                return size
        return self.cache_length

    def windows(self) -> tuple[int, ...]:
        """Every size `window` can return, smallest first."""
        return tuple(sorted({self.window(self.cache_length * k // 8) for k in range(1, 9)}))

    @classmethod
    def for_model(cls, model_config: ModelConfig, tokenizer, *, cache_length: int, max_answer_tokens: int,
                  max_turns: int = 64, min_bucket: int = 16) -> "DecodeSpec":
        """A spec with the control ids of `tokenizer` (a `CXRTrekTokenizer`), checked against the model."""
        mismatch = tokenizer.model_mismatch(model_config.image_token_id, model_config.vocab_size)
        if mismatch:
            raise ValueError(mismatch)
        if cache_length > model_config.text.max_positions:
            raise ValueError(f"cache_length {cache_length} exceeds the model's max_positions "
                             f"{model_config.text.max_positions}")
        return cls(cache_length=cache_length, max_answer_tokens=max_answer_tokens, max_turns=max_turns,
                   end_of_turn_id=tokenizer.end_of_turn_id, pad_id=tokenizer.pad_id,
                   suppressed_ids=(tokenizer.image_id, tokenizer.bos_id, tokenizer.pad_id),
                   vocab_limit=tokenizer.vocab_size if tokenizer.vocab_size < model_config.vocab_size else None,
                   min_bucket=min_bucket)


# ----------------------------------------------------------------------------- pure step functions


def _model(graphdef: nnx.GraphDef, params: nnx.State) -> CXRTrekNet:
    """The model merged from its static graph and state, in inference mode: no dropout, and no
    per-block rematerialisation (it only matters under differentiation, and `nnx.remat` cannot run
    inside the answer's `while_loop` on parameters merged outside it)."""
    model = nnx.view(nnx.merge(graphdef, params), deterministic=True, raise_if_not_found=False)
    for _, module in nnx.iter_modules(model):
        if getattr(module, "remat", False):
            module.remat = False
    return model


def _row_take(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[b, index[b]] for values [B, L, ...], index int32[B]."""
    return jnp.take_along_axis(values, index[:, None, *([None] * (values.ndim - 2))], axis=1)[:, 0]


def start_step(graphdef: nnx.GraphDef, spec: DecodeSpec, params: nnx.State, images: jax.Array,
               image_mask: jax.Array, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
               rng: jax.Array) -> ChainState:
    """Encode the images once and prefill the prompt; a fresh state.

    images float32[B, M, H, W] in [0, 1]; image_mask bool[B, M]; prompt_tokens
    int32[B, P] right-padded (no image tokens), prompt_lengths int32[B] >= 1;
    rng a PRNG key. A prompt longer than S leaves the sample overflowed.
    """
    model = _model(graphdef, params)
    batch, prompt_len = prompt_tokens.shape
    features = model.encode_images(images)
    cache = model.init_cache(batch, spec.cache_length)
    fits = prompt_lengths <= spec.cache_length
    real = (jnp.arange(prompt_len)[None, :] < prompt_lengths[:, None]) & fits[:, None]
    zeros = jnp.zeros((batch,), jnp.int32)
    logits, cache = model(prompt_tokens, image_mask=image_mask, positions=jnp.broadcast_to(
        jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len)), segment_ids=real.astype(jnp.int32),
        cache=cache, cache_index=zeros, image_features=features)
    length = jnp.where(fits, prompt_lengths, 0).astype(jnp.int32)
    turns, answer_len = spec.max_turns, spec.max_answer_tokens
    return ChainState(
        cache=cache,
        image_features=features,
        image_mask=image_mask,
        length=length,
        prompt_length=length,
        answer_start=length,
        stage=zeros,
        done=jnp.ones((batch,), bool),
        stop_reason=jnp.where(fits, StopReason.NOT_ASKED, StopReason.CACHE_FULL).astype(jnp.int32),
        overflowed=~fits,
        next_logits=_row_take(logits, jnp.clip(prompt_lengths - 1, 0, prompt_len - 1)),
        tokens=jnp.full((batch, answer_len), spec.pad_id, jnp.int32),
        num_tokens=zeros,
        constrained=jnp.zeros((batch,), bool),
        box_registers=jnp.zeros((batch, box_grammar.REGISTERS), jnp.int32),
        rng=rng,
        turn=jnp.zeros((), jnp.int32),
        answers=jnp.full((batch, turns, answer_len), spec.pad_id, jnp.int32),
        answer_lengths=jnp.zeros((batch, turns), jnp.int32),
        answer_stages=jnp.zeros((batch, turns), jnp.int32),
        stop_reasons=jnp.zeros((batch, turns), jnp.int32),
    )


def _in_window(window: int | None, state: ChainState, step):
    """`step(state)` run on the state's cache cut to its first `window` slots (None: all S);
    the slots beyond are kept as they are. step returns a state or (state, extra)."""
    if window is None or window == state.cache_length:
        return step(state)
    out = step(state.replace(cache=state.cache.prefix(window)))
    inner, extra = (out, None) if isinstance(out, ChainState) else out
    inner = inner.replace(cache=state.cache.with_prefix(inner.cache))
    return inner if extra is None else (inner, extra)


def ask_step(graphdef: nnx.GraphDef, spec: DecodeSpec, params: nnx.State, state: ChainState,
             question_tokens: jax.Array, question_lengths: jax.Array, stages: jax.Array,
             window: int | None = None, constrained: jax.Array | None = None) -> ChainState:
    """Prefill the next chunk of each conversation at its write position.

    question_tokens int32[B, L] right-padded; question_lengths int32[B]
    (0 = this sample is not asked this turn); stages int32[B] (0 when not
    asked). Image tokens in the chunk take the next stored features. A sample
    whose chunk does not fit in the cache is not written: it is marked
    overflowed with stop reason CACHE_FULL. window (static): attend over the
    cache's first `window` slots only; the caller guarantees every asked
    sample's chunk ends within them (None: the whole cache).
    constrained bool[B]: the answer of this sample follows the box grammar (None: no sample's
    does; `answer_step` applies it when its decoder has a grammar).
    The LM head runs at each sample's last chunk token only.
    """
    return _in_window(window, state, lambda s: _ask(graphdef, spec, params, s, question_tokens,
                                                    question_lengths, stages, constrained))


def _ask(graphdef, spec, params, state, question_tokens, question_lengths, stages, constrained) -> ChainState:
    model = _model(graphdef, params)
    batch, chunk_len = question_tokens.shape
    asked = (question_lengths > 0) & ~state.overflowed
    fits = state.length + question_lengths <= spec.cache_length
    active = asked & fits
    overflow_now = asked & ~fits
    real = (jnp.arange(chunk_len)[None, :] < question_lengths[:, None]) & active[:, None]
    positions = state.length[:, None] + jnp.arange(chunk_len, dtype=jnp.int32)[None, :]
    hidden, cache = model(question_tokens, image_mask=state.image_mask, positions=positions,
                          segment_ids=real.astype(jnp.int32), cache=state.cache, cache_index=state.length,
                          image_features=state.image_features, return_hidden=True)
    last = model.text.head(_row_take(hidden, jnp.clip(question_lengths - 1, 0, chunk_len - 1)))
    length = state.length + jnp.where(active, question_lengths, 0)
    reason = jnp.where(active, StopReason.IN_PROGRESS,
                       jnp.where(overflow_now | (state.overflowed & (question_lengths > 0)),
                                 StopReason.CACHE_FULL, StopReason.NOT_ASKED))
    return state.replace(
        cache=cache,
        length=length,
        answer_start=length,
        stage=stages.astype(jnp.int32),
        done=~active,
        stop_reason=reason.astype(jnp.int32),
        overflowed=state.overflowed | overflow_now,
        next_logits=jnp.where(active[:, None], last, state.next_logits),
        tokens=jnp.full_like(state.tokens, spec.pad_id),
        num_tokens=jnp.zeros_like(state.num_tokens),
        constrained=active & (False if constrained is None else constrained.astype(bool)),
        box_registers=jnp.zeros_like(state.box_registers),
    )


def _allowed_logits(spec: DecodeSpec, logits: jax.Array, num_tokens: jax.Array,
                    min_new_tokens: jax.Array) -> jax.Array:
    """Logits with suppressed ids removed, and end-of-turn removed while the answer is too short."""
    if spec.suppressed_ids:
        logits = logits.at[:, jnp.asarray(spec.suppressed_ids)].set(_SUPPRESSED)
    if spec.vocab_limit is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < spec.vocab_limit, logits, _SUPPRESSED)
    too_short = num_tokens < min_new_tokens - 1
    eot = logits[:, spec.end_of_turn_id]
    return logits.at[:, spec.end_of_turn_id].set(jnp.where(too_short, _SUPPRESSED, eot))


def answer_step(graphdef: nnx.GraphDef, spec: DecodeSpec, params: nnx.State, state: ChainState,
                sampling: SamplingConfig, max_new_tokens: jax.Array,
                min_new_tokens: jax.Array, window: int | None = None,
                grammar: BoxGrammar | None = None) -> tuple[ChainState, jax.Array]:
    """Decode every asked sample's answer; returns the state and the tokens int32[B, A].

    max_new_tokens / min_new_tokens: int32[] or int32[B], counting the closing
    end-of-turn token; the budget is clipped to 1..A. When a sample reaches
    its budget without an end-of-turn, one is appended (stop reason
    MAX_NEW_TOKENS) so the conversation stays well formed. A sample whose
    next token has no free cache slot stops with CACHE_FULL and is marked
    overflowed. The turn is then added to the record (row `state.turn`).
    window (static): decode over the cache's first `window` slots only (each step attends to
    them, not to all S); the caller guarantees that every asked sample's answer ends within
    them, or window is S (None: S).
    grammar (static): the box grammar of the tokenizer; the samples marked `constrained` take only
    the ids it allows (`box_grammar.allowed_tokens`, greedy and sampled alike), so an answer
    given at least `grammar.min_tokens` of budget parses as boxes (None: no constraint).
    """
    return _in_window(window, state, lambda s: _answer(graphdef, spec, params, s, sampling, max_new_tokens,
                                                       min_new_tokens, grammar))


def _answer(graphdef, spec, params, state, sampling, max_new_tokens, min_new_tokens, grammar):
    model = _model(graphdef, params)
    batch, capacity = state.tokens.shape
    budget = jnp.broadcast_to(jnp.clip(max_new_tokens, 1, capacity), (batch,)).astype(jnp.int32)
    minimum = jnp.broadcast_to(min_new_tokens, (batch,)).astype(jnp.int32)
    rows = jnp.arange(batch)

    def running(carry):
        current, step = carry
        return jnp.any(~current.done) & (step < capacity)

    def decode_one(carry):
        current, step = carry
        rng, key = jax.random.split(current.rng)
        logits = _allowed_logits(spec, current.next_logits, current.num_tokens, minimum)
        if grammar is not None:
            allowed = box_grammar.allowed_tokens(grammar, current.box_registers, budget - current.num_tokens, jnp)
            logits = jnp.where(current.constrained[:, None] & ~allowed, _SUPPRESSED, logits)
        token = sample_tokens(logits, key, sampling)
        at_budget = current.num_tokens >= budget - 1
        forced = at_budget & (token != spec.end_of_turn_id)
        token = jnp.where(at_budget, spec.end_of_turn_id, token)
        live = ~current.done
        write = live & (current.length < current.cache_length)
        overflow_now = live & ~write
        registers = current.box_registers
        if grammar is not None:
            registers = jnp.where((write & current.constrained)[:, None],
                                  box_grammar.advance(grammar, registers, token, jnp), registers)
        new_logits, cache = model(token[:, None], positions=current.length[:, None],
                                  segment_ids=write[:, None].astype(jnp.int32), cache=current.cache,
                                  cache_index=current.length)
        slot = jnp.minimum(current.num_tokens, capacity - 1)
        tokens = current.tokens.at[rows, slot].set(jnp.where(write, token, current.tokens[rows, slot]))
        finished = write & (token == spec.end_of_turn_id)
        reason = jnp.where(finished, jnp.where(forced, StopReason.MAX_NEW_TOKENS, StopReason.END_OF_TURN),
                           current.stop_reason)
        reason = jnp.where(overflow_now, StopReason.CACHE_FULL, reason)
        current = current.replace(
            cache=cache,
            length=current.length + write,
            done=current.done | finished | overflow_now,
            stop_reason=reason.astype(jnp.int32),
            overflowed=current.overflowed | overflow_now,
            next_logits=jnp.where(write[:, None], new_logits[:, 0], current.next_logits),
            tokens=tokens,
            num_tokens=current.num_tokens + write,
            box_registers=registers,
            rng=rng,
        )
        return current, step + 1

    state, _ = jax.lax.while_loop(running, decode_one, (state, jnp.zeros((), jnp.int32)))
    turn = state.turn
    state = state.replace(
        turn=turn + 1,
        answers=state.answers.at[:, turn].set(state.tokens, mode="drop"),
        answer_lengths=state.answer_lengths.at[:, turn].set(state.num_tokens, mode="drop"),
        answer_stages=state.answer_stages.at[:, turn].set(state.stage, mode="drop"),
        stop_reasons=state.stop_reasons.at[:, turn].set(state.stop_reason, mode="drop"),
    )
    return state, state.tokens


def admit_step(graphdef: nnx.GraphDef, spec: DecodeSpec, params: nnx.State, state: ChainState,
               slots: jax.Array, images: jax.Array, image_mask: jax.Array, prompt_tokens: jax.Array,
               prompt_lengths: jax.Array) -> ChainState:
    """Start N new conversations in rows `slots` of a running state (continuous batching: a
    study whose chain has ended gives its row to the next one).

    slots int32[N] (a value >= B: a padding entry, nothing written); images, image_mask,
    prompt_tokens, prompt_lengths as `start_step` for the N new samples. Their images are
    encoded and prompts prefilled as `start_step` does (into fresh rows), then every per-sample
    field of those rows is replaced; the other rows, the PRNG key and the turn counter are kept.
    """
    fresh = start_step(graphdef, spec, params, images, image_mask, prompt_tokens, prompt_lengths, state.rng)
    fresh = fresh.replace(rng=state.rng, turn=state.turn)
    rows = slots.astype(jnp.int32)

    def put(old, new):
        return old if old.ndim == 0 or jax.dtypes.issubdtype(old.dtype, jax.dtypes.prng_key) else (
            old.at[rows].set(new, mode="drop"))

    return jax.tree.map(put, state, fresh)


def rewind_step(state: ChainState, length: jax.Array, image_tokens_seen: jax.Array) -> ChainState:
    """Move each sample's write position back to `length` int32[B].

    image_tokens_seen int32[B]: image tokens within slots 0..length-1 (the
    next image token takes the feature after them). The caller guarantees
    prompt_length <= length <= state.length, and chooses what follows: every
    sample is cleared of `overflowed` (the next chunk is checked afresh).
    The cache contents are untouched: slots from `length` on are overwritten
    by what follows.
    """
    length = length.astype(jnp.int32)
    return state.replace(
        cache=state.cache.replace(image_tokens_seen=image_tokens_seen.astype(jnp.int32)),
        length=length,
        answer_start=jnp.minimum(state.answer_start, length),
        overflowed=jnp.zeros_like(state.overflowed),
    )


# ----------------------------------------------------------------------------- sharding


def param_shardings(params: nnx.State, mesh: Mesh,
                    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES) -> nnx.State:
    """`NamedSharding`s for a model state by each variable's logical axis names
    (as the training state is sharded); variables without names are replicated."""
    def one(variable):
        names = variable.get_metadata().get("out_sharding")
        spec = sharding_lib.partition_spec(None if names is None else tuple(names),
                                           np.shape(variable.get_value()), mesh, rules)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _is_axis_names(node) -> bool:
    """A leaf of `state_logical_axes`: None or a tuple of names (not the tuple of per-layer tuples)."""
    return node is None or (isinstance(node, tuple) and all(n is None or isinstance(n, str) for n in node))


def _constrain_state(state: ChainState, mesh: Mesh, rules: sharding_lib.LogicalRules) -> ChainState:
    axes = state_logical_axes(state)

    def one(names, x):
        spec = sharding_lib.partition_spec(names, x.shape, mesh, rules)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(one, axes, state, is_leaf=_is_axis_names)


# ----------------------------------------------------------------------------- the jitted decoder


def _pad_rows(rows: Sequence[np.ndarray | Sequence[int] | None], width: int, pad_id: int) -> np.ndarray:
    out = np.full((len(rows), width), pad_id, np.int32)
    for b, row in enumerate(rows):
        if row is not None and len(row):
            row = np.asarray(row, np.int32)[:width]
            out[b, : row.size] = row
    return out


class StepwiseDecoder:
    """The step functions jitted for one model graph (of `model_config`) and `DecodeSpec`.

    Methods take host-side token lists (ragged), pad them to a bucket length
    and call the jitted pure functions. Off CPU, `ask`, `answer` and `rewind`
    donate the state passed in: use only the state they return. With `mesh`, the state is sharded like
    the training state (batch over data x fsdp, KV heads over tensor) and the
    model's activation constraints are active while tracing; a mesh may span processes (every
    process then runs the same calls in the same order, and `fetch` reads results). With `grammar`
    (`BoxGrammar.build(tokenizer, model_config.vocab_size)`), the answers of samples asked
    with `constrained` follow the box grammar (`answer_step`). The layers run in the forms of the
    platform (the mesh's devices, else JAX's default backend; `backward_passes`): the
    hand-written-backward forms on CPU, the plain forms elsewhere (on TPU the hand-written forms
    took the MedGemma 4B prefill of 32 x 2048 tokens on v5p 2x2x2 from 9.54 to 17.58 GiB of
    temporaries per chip). Same results either way.
    """

    def __init__(self, graphdef: nnx.GraphDef, model_config: ModelConfig, spec: DecodeSpec, *,
                 mesh: Mesh | None = None, rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES,
                 grammar: BoxGrammar | None = None):
        if grammar is not None and grammar.vocab_size != model_config.vocab_size:
            raise ValueError(f"the box grammar covers {grammar.vocab_size} ids, the model's logits "
                             f"{model_config.vocab_size}: build it with vocab_size=model_config.vocab_size")
        self.graphdef = graphdef
        self.model_config = model_config
        self.spec = spec
        self.mesh = mesh
        self.rules = rules
        self.grammar = grammar
        self.hand_written = backward_passes.hand_written_backward_wins(
            jax.default_backend() if mesh is None else mesh.devices.flat[0].platform)
        # The state's buffers (the KV cache above all) are donated to the step that replaces them,
        # except on CPU, which cannot reuse donated buffers.
        donate = jax.default_backend() != "cpu"
        self._start = jax.jit(self._sharded(functools.partial(start_step, graphdef, spec)))
        self._ask = jax.jit(self._sharded(functools.partial(ask_step, graphdef, spec)),
                            static_argnums=(5,), donate_argnums=(1,) if donate else ())
        self._answer = jax.jit(self._sharded(functools.partial(answer_step, graphdef, spec, grammar=grammar)),
                               static_argnums=(2, 5), donate_argnums=(1,) if donate else ())
        self._admit = jax.jit(self._sharded(functools.partial(admit_step, graphdef, spec)),
                              donate_argnums=(1,) if donate else ())
        self._rewind = jax.jit(self._sharded(rewind_step), donate_argnums=(0,) if donate else ())
        self._replicate = None if mesh is None else jax.jit(lambda tree: tree,
                                                             out_shardings=sharding_lib.replicated(mesh))

    def _sharded(self, fn):
        """`fn` traced with the platform's layer forms (`hand_written`) and, with a mesh, under its
        axis rules, its output state constrained to the state shardings."""
        mesh, rules, hand_written = self.mesh, self.rules, self.hand_written

        @functools.wraps(fn)
        def wrapped(*args):
            with backward_passes.hand_written_backward(hand_written):
                if mesh is None:
                    return fn(*args)
                with axis_rules(rules, mesh):
                    out = fn(*args)
            if isinstance(out, ChainState):
                return _constrain_state(out, mesh, rules)
            state, tokens = out
            return _constrain_state(state, mesh, rules), tokens

        return wrapped

    def fetch(self, arrays):
        """Host (numpy) copies of a pytree of device arrays (e.g. the state fields a chain reads
        after each turn). On a mesh spanning processes each process holds only some rows of the
        state: the arrays are first replicated to every device (one all-gather), so every process
        gets them whole and all take the same host-side decisions."""
        if all(x.is_fully_addressable for x in jax.tree.leaves(arrays)):
            return jax.device_get(arrays)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), self._replicate(arrays))

    def lower_answer(self, params: nnx.State, state: ChainState, sampling: SamplingConfig, *,
                     window: int | None = None) -> jax.stages.Lowered:
        """The jitted `answer` step lowered for `params` and `state`, which may be abstract
        (`jax.ShapeDtypeStruct`s carrying shardings): `.compile()` gives its memory and cost analysis
        without running it (the TPU compile check)."""
        budget = jax.ShapeDtypeStruct((state.batch_size,), jnp.int32)
        return self._answer.lower(params, state, sampling, budget, budget, window)

    def compiled_count(self) -> int:
        """Executables compiled so far by this decoder (all step functions together)."""
        return sum(f._cache_size() for f in (self._start, self._ask, self._answer, self._rewind, self._admit))

    def chunk_buckets(self) -> tuple[int, ...]:
        """Every padded chunk length `ask` can use (min_bucket * 2**k up to S)."""
        sizes = [self.spec.bucket(1)]
        while sizes[-1] < self.spec.cache_length:
            sizes.append(self.spec.bucket(sizes[-1] + 1))
        return tuple(sizes)

    def warm_up(self, params: nnx.State, *, batch_size: int, image_shape: tuple[int, int], prompt_length: int,
                sampling: SamplingConfig) -> None:
        """Compile every step function for this batch size up front: `start` for the bucket of
        `prompt_length`, `ask` for every (chunk bucket, window) pair, `answer` for `sampling` in
        every window, `rewind`, and `admit` of one study. After it, chains of `batch_size` studies
        with prompts in that bucket compile nothing (streams: nothing for admissions of one study)."""
        slots = self.model_config.max_images
        images = np.zeros((batch_size, slots, *image_shape), np.float32)
        prompts = [[self.spec.pad_id] * prompt_length] * batch_size
        state = self.start(params, images, np.zeros((batch_size, slots), bool), prompts, jax.random.key(0))
        none_asked = np.zeros((batch_size,), np.int32)
        budgets = np.ones((batch_size,), np.int32)
        for window in self.spec.windows():
            for width in self.chunk_buckets():
                if width <= window:
                    state = self._ask(params, state, np.full((batch_size, width), self.spec.pad_id, np.int32),
                                      none_asked, none_asked, window, none_asked.astype(bool))
            state, _ = self._answer(params, state, sampling, budgets, budgets, window)
        state = self._rewind(state, *jax.device_get((state.length, state.cache.image_tokens_seen)))
        state = self.admit(params, state, [0], images[:1], np.zeros((1, slots), bool), prompts[:1])
        jax.block_until_ready(state)

    def start(self, params: nnx.State, images: np.ndarray, image_mask: np.ndarray,
              prompts: Sequence[Sequence[int]], rng: jax.Array) -> ChainState:
        """images float32[B, M, H, W]; image_mask bool[B, M]; one prompt token list per sample."""
        lengths = np.array([len(p) for p in prompts], np.int32)
        if lengths.size != len(images) or lengths.min(initial=1) < 1:
            raise ValueError(f"need one non-empty prompt per sample: {len(images)} samples, "
                             f"prompt lengths {lengths.tolist()}")
        width = self.spec.bucket(int(lengths.max()))
        return self._start(params, jnp.asarray(images, jnp.float32), jnp.asarray(image_mask, bool),
                           _pad_rows(prompts, width, self.spec.pad_id), lengths, rng)

    def ask(self, params: nnx.State, state: ChainState, chunks: Sequence[Sequence[int] | None],
            stages: Sequence[int], *, window: int | None = None,
            constrained: Sequence[bool] | None = None) -> ChainState:
        """Prefill one chunk per sample (None or empty: not asked this turn).
        constrained: per sample, its answer follows the box grammar (None: no sample's does).
        window: the cache prefix to attend over (`DecodeSpec.window` of the longest asked
        sample's length after the chunk; None: the whole cache); ValueError if an asked chunk
        that fits the cache would end past it."""
        if len(chunks) != state.batch_size or len(stages) != state.batch_size:
            raise ValueError(f"ask needs one chunk and one stage per sample ({state.batch_size}), "
                             f"got {len(chunks)} chunks and {len(stages)} stages")
        lengths = np.array([0 if c is None else len(c) for c in chunks], np.int32)
        self._check_image_tokens(state, chunks)
        if window is not None:
            self._check_window(window, jax.device_get(state.length), lengths)
        return self._ask_unchecked(params, state, chunks, stages, window, constrained)

    def _ask_unchecked(self, params, state, chunks, stages, window, constrained=None):
        lengths = np.array([0 if c is None else len(c) for c in chunks], np.int32)
        window = self.spec.cache_length if window is None else window
        width = min(self.spec.bucket(max(int(lengths.max(initial=1)), 1)), window)
        if lengths.max(initial=0) > width:  # does not fit even the whole cache: ask_step marks it overflowed
            width = self.spec.cache_length
        flags = np.zeros((len(chunks),), bool) if constrained is None else np.asarray(constrained, bool)
        if flags.shape != (len(chunks),):
            raise ValueError(f"need one constrained flag per sample ({len(chunks)}), got {flags.shape}")
        return self._ask(params, state, _pad_rows(chunks, width, self.spec.pad_id), lengths,
                         np.asarray(stages, np.int32), window, flags)

    def _check_window(self, window: int, lengths: np.ndarray, adds: np.ndarray) -> None:
        """ValueError unless `window` is one of the spec's windows and holds every sample that
        adds tokens (adds > 0) and fits the cache: lengths + adds <= window."""
        if window not in self.spec.windows():
            raise ValueError(f"window {window} is not one of the decoder's windows {self.spec.windows()}")
        end = np.asarray(lengths) + np.asarray(adds)
        bad = np.flatnonzero((np.asarray(adds) > 0) & (end > window) & (end <= self.spec.cache_length))
        if bad.size:
            raise ValueError(f"samples {bad.tolist()} would write up to slot {end[bad].tolist()}, past the "
                             f"window of {window} slots")

    def _check_image_tokens(self, state: ChainState, chunks: Sequence[Sequence[int] | None]) -> None:
        """ValueError naming the samples whose chunk holds more image tokens than their images have
        features left (under jit the model would only turn those rows' logits into NaN)."""
        image_id, per_image = self.model_config.image_token_id, self.model_config.tokens_per_image
        in_chunk = np.array([0 if c is None else int(np.count_nonzero(np.asarray(c) == image_id)) for c in chunks])
        if not in_chunk.any():
            return
        seen, mask = jax.device_get((state.cache.image_tokens_seen, state.image_mask))
        available = np.sum(mask, axis=1) * per_image
        bad = np.flatnonzero(seen + in_chunk > available)
        if bad.size:
            details = "; ".join(f"sample {b}: {seen[b]} image tokens so far + {in_chunk[b]} in the chunk > "
                                f"{available[b]} features" for b in bad)
            raise ValueError(f"more image tokens than image features ({details})")

    def answer(self, params: nnx.State, state: ChainState, sampling: SamplingConfig,
               max_new_tokens: int | np.ndarray, min_new_tokens: int | np.ndarray = 0, *,
               window: int | None = None) -> tuple[ChainState, jax.Array]:
        """Decode the answers; see `answer_step`. The budgets are a number or one per sample.
        window: as `ask` (every asked sample's length plus its budget must fit in it)."""
        budgets = [np.broadcast_to(np.asarray(value, np.int32), (state.batch_size,))
                   for value in (max_new_tokens, min_new_tokens)]
        if window is not None:
            length, done = jax.device_get((state.length, state.done))
            self._check_window(window, length, np.where(done, 0, np.clip(budgets[0], 1, self.spec.max_answer_tokens)))
        return self._answer(params, state, sampling, *budgets, window)

    def admit(self, params: nnx.State, state: ChainState, slots: Sequence[int], images: np.ndarray,
              image_mask: np.ndarray, prompts: Sequence[Sequence[int]]) -> ChainState:
        """Start new studies in rows `slots` of a running state (`admit_step`): images float32[N, M, H, W],
        image_mask bool[N, M], one prompt per study. N is padded to a power of two (at most B)
        so few shapes compile."""
        count = len(slots)
        if not 0 < count <= state.batch_size or len(images) != count or len(prompts) != count:
            raise ValueError(f"admit needs 1..{state.batch_size} slots with one image stack and prompt each, "
                             f"got {count} slots, {len(images)} image stacks, {len(prompts)} prompts")
        if len(set(slots)) != count or not all(0 <= s < state.batch_size for s in slots):
            raise ValueError(f"admit slots must be distinct rows in 0..{state.batch_size - 1}, got {list(slots)}")
        lengths = np.array([len(p) for p in prompts], np.int32)
        if lengths.min() < 1:
            raise ValueError(f"need one non-empty prompt per study, prompt lengths {lengths.tolist()}")
        size = min(1 << (count - 1).bit_length(), state.batch_size)
        pad = size - count
        rows = np.concatenate([np.asarray(slots, np.int32), np.full((pad,), state.batch_size, np.int32)])
        images = np.concatenate([np.asarray(images, np.float32), np.zeros((pad, *images.shape[1:]), np.float32)])
        image_mask = np.concatenate([np.asarray(image_mask, bool), np.zeros((pad, image_mask.shape[1]), bool)])
        lengths = np.concatenate([lengths, np.ones((pad,), np.int32)])
        prompts = list(prompts) + [[self.spec.pad_id]] * pad
        width = self.spec.bucket(int(lengths.max()))
        return self._admit(params, state, rows, images, image_mask, _pad_rows(prompts, width, self.spec.pad_id),
                           lengths)

    def turn(self, params: nnx.State, state: ChainState, *, length: Sequence[int], image_tokens_seen: Sequence[int],
             chunks: Sequence[Sequence[int] | None], stages: Sequence[int], sampling: SamplingConfig,
             max_new_tokens: int, min_new_tokens: int = 0,
             constrained: Sequence[bool] | None = None) -> tuple[ChainState, jax.Array]:
        """One turn for every sample, dispatched without waiting on the device: rewind to
        `length` (the caller's record of each sample's valid context, `rewind` without its
        check), prefill the chunks (`ask`) and decode the answers (`answer`), both in the
        smallest window holding every asked sample's context and answer. constrained: as `ask`.
        Returns the state and
        the tokens of `answer`; one `jax.device_get` of what the caller needs ends the turn."""
        length = np.asarray(length, np.int32)
        adds = np.array([0 if c is None else len(c) for c in chunks], np.int32)
        budget = int(np.clip(max_new_tokens, 1, self.spec.max_answer_tokens))
        ends = np.where(adds > 0, length + adds + budget, 0)
        window = self.spec.window(int(ends.max(initial=1)))
        state = self._rewind(state, length, np.asarray(image_tokens_seen, np.int32))
        state = self._ask_unchecked(params, state, chunks, stages, window, constrained)
        budgets = [np.full((state.batch_size,), value, np.int32) for value in (max_new_tokens, min_new_tokens)]
        return self._answer(params, state, sampling, *budgets, window)

    def rewind(self, state: ChainState, length: Sequence[int], image_tokens_seen: Sequence[int]) -> ChainState:
        """Move the write positions back; ValueError unless prompt_length <= length <= state.length."""
        length = np.asarray(length, np.int32)
        current, prompt = jax.device_get((state.length, state.prompt_length))
        bad = np.flatnonzero((length < prompt) | (length > current))
        if bad.size:
            raise ValueError(f"cannot rewind samples {bad.tolist()} to {length[bad].tolist()}: valid range is "
                             f"prompt length {prompt[bad].tolist()} .. current length {current[bad].tolist()}")
        return self._rewind(state, length, np.asarray(image_tokens_seen, np.int32))
