"""Running staged conversations: a batch of studies, turn by turn, in one of three context modes.

    decoder = StepwiseDecoder(graphdef, cfg, DecodeSpec.for_model(cfg, tokenizer, ...))
    results = run_chain(decoder, params, tokenizer, studies, context="own", max_new_tokens=64)
    for index, results in stream_chain(decoder, params, tokenizer, study_iterator, batch_size=8, ...):
        ...  # continuous batching: a study whose chain ends gives its row to the next one

Context modes (what the earlier turns of the conversation hold when a turn is asked):
  own      the model's own answers (generated tokens, as generated);
  teacher  the reference answers (the model's answer to each turn is recorded,
           then replaced by the reference);
  none     nothing: each question sees only the system prompt and the images.

The conversation of each mode is exactly what training sees (`data_pipeline.text.sequences`):
images are introduced by placeholders in the question of the turn that first
needs them (own / teacher, like a stage-context sequence), or all images
visible at a turn are placed in its question (none, like a per-turn sequence).

Every turn, each sample's wanted context (the prompt, the earlier turns of its
mode, the new question) is compared with what its cache holds (a host-side
copy of the cached token ids); the cache is rewound to their longest common
prefix and only the rest is prefilled. In `own` mode nothing is rewound; in
`teacher` mode the model's answer is rolled back from where it departs from
the reference; in `none` mode the cache goes back towards the post-start
position, keeping whatever prefix the new question shares with the previous
one (e.g. its image tokens). Identical token ids at identical positions give
identical keys and values, so this equals re-encoding the conversation from
scratch, which never happens: the images are encoded once by `start`.

Long chains (own / teacher): when the wanted context plus `max_new_tokens`
does not fit the cache, the turn is asked in a window, as training windows a
chain (`data_pipeline.text.sequences`): the prompt, every image the turn needs
(placed in the window's first question) and as many earlier turns as fit,
newest first, with the mode's answers; the cache is rewound to the prompt and
the window prefilled. Later turns continue in the window until it is full
again. `TurnResult.context_dropped` counts the earlier turns left out.
A turn that does not fit even alone (or whose answer runs out of cache) ends
with stop reason "cache_full"; the next turn rewinds and is tried afresh (in
`own` mode in a window without the unanswered turn).

Detection turns (qtype "detection", `box_grammar.is_box_turn`) are decoded under the box
grammar when the decoder has one (`StepwiseDecoder(..., grammar=BoxGrammar.build(...))`): with
`max_new_tokens` at least `grammar.min_tokens`, every such answer parses as boxes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from cxrtrek_jax.decoding.chain_state import ChainState, StopReason
from cxrtrek_jax.decoding.sampling import GREEDY, SamplingConfig
from cxrtrek_jax.decoding.stepwise import StepwiseDecoder
from cxrtrek_jax.decoding.turn_plans import Turn, TurnPlan
from cxrtrek_jax.contexts import CHAIN_CONTEXTS
from data_pipeline.files.image_processing import ImageProcessing, model_input
from data_pipeline.files.images import load_image
from data_pipeline.schema.records import Message
from data_pipeline.text.box_grammar import is_box_turn
from data_pipeline.text.sequences import place_placeholders
from data_pipeline.text.tokenizer import CXRTrekTokenizer

__all__ = ["ChainStudy", "TurnResult", "ChatTokens", "run_chain", "stream_chain", "stack_images",
           "load_study_images"]


@dataclasses.dataclass(frozen=True, eq=False)
class ChainStudy:
    """One study to run.

    images: float32[K, H, W] in [0, 1] at the model's image size, current
        study first, then prior (then later) views; K <= the model's max_images.
    system_prompt: the system message.
    plan: makes a fresh `TurnPlan` (e.g. `lambda: fixed_plan(turns)`).
    """

    study_id: str
    images: np.ndarray
    system_prompt: str
    plan: Callable[[], TurnPlan]


@dataclasses.dataclass(frozen=True)
class TurnResult:
    """One decoded turn.

    answer_tokens: the generated answer ids (end-of-turn excluded).
    num_generated_tokens: tokens the model generated for the turn (end-of-turn included).
    stop_reason: a `StopReason` label ("end_of_turn", "max_new_tokens",
        "cache_full", "not_asked").
    latency_s: wall time of the whole batched turn (rewind, prefill and decoding), seconds.
    context_dropped: earlier turns left out of this turn's context to fit the cache (0: none).
    """

    study_id: str
    turn_index: int
    stage: int
    task_type: str
    qtype: str
    question: str
    reference: str | None
    answer: str
    answer_tokens: tuple[int, ...]
    num_generated_tokens: int
    stop_reason: str
    latency_s: float
    context: str
    context_dropped: int = 0


def load_study_images(paths: Sequence[str | os.PathLike], image_size: int,
                      processing: ImageProcessing | None = None) -> np.ndarray:
    """PNG/JPEG/DICOM files -> float32[K, S, S]: fitted by `processing` (an imported checkpoint's image
    processor), by default aspect kept, padded black (`model_input`); `ImageLoadError` names a bad file."""
    if not paths:
        return np.zeros((0, image_size, image_size), np.float32)
    return np.stack([model_input(load_image(path), image_size, processing) for path in paths])


class ChatTokens:
    """Token ids of conversation pieces, encoded with the one chat template."""

    def __init__(self, tokenizer: CXRTrekTokenizer, tokens_per_image: int):
        self.tokenizer = tokenizer
        self.tokens_per_image = tokens_per_image

    def prompt(self, system_prompt: str) -> list[int]:
        """bos, system prefix, the system prompt, end-of-turn; with a checkpoint's own template
        (conversations rendered whole, `_template_context`) only the first token every rendering
        starts with (bos)."""
        if not self.tokenizer.additive:
            asked = [Message("system", system_prompt), Message("user", "?")]
            return self.tokenizer.encode_chat(asked, add_generation_prompt=True).ids[:1].tolist()
        return self.tokenizer.encode_chat([Message("system", system_prompt)]).ids.tolist()

    def question(self, text: str) -> list[int]:
        """User prefix, the question (image placeholders expanded), end-of-turn, assistant prefix."""
        encoded = self.tokenizer.encode_chat([Message("user", text)], tokens_per_image=self.tokens_per_image,
                                             add_generation_prompt=True)
        return encoded.ids[1:].tolist()

    def answer_body(self, text: str) -> list[int]:
        """An answer's content and its end-of-turn (the assistant prefix ends the question)."""
        encoded = self.tokenizer.encode_chat([Message("assistant", text)])
        return encoded.ids[encoded.spans[0].content_start:].tolist()


@dataclasses.dataclass
class _Conversation:
    """Host-side bookkeeping of one sample."""

    study: ChainStudy
    prompt: list[int]
    cached: list[int]          # the token ids in the sample's cache, slots 0..length-1
    teacher: list[int]         # the teacher-forced conversation so far (teacher mode)
    plan: TurnPlan
    turn: Turn | None
    shown: int = 0             # images introduced so far (own / teacher)
    overflowed: bool = False   # the last turn ran out of cache (own: the sample has stopped)
    results: list[TurnResult] = dataclasses.field(default_factory=list)
    # (turn, its answer as the context holds it) of every asked turn, own / teacher
    history: list[tuple[Turn, list[int]]] = dataclasses.field(default_factory=list)
    window_start: int = 0      # history turns before this one are not in the current context
    dropped_now: int = 0       # earlier turns left out of the current turn's context


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return n if differ.size == 0 else int(differ[0])


def _check_turn(conv: _Conversation, turn: Turn, context: str) -> None:
    study = conv.study
    if not 0 <= turn.image_input_count <= len(study.images):
        raise ValueError(f"study {study.study_id!r} turn {turn.turn_index}: image_input_count "
                         f"{turn.image_input_count} outside 0..{len(study.images)} (the study's images)")
    if context == "teacher" and turn.reference is None:
        raise ValueError(f"study {study.study_id!r} turn {turn.turn_index}: context 'teacher' needs a "
                         "reference answer for every turn")


def _wanted_context(conv: _Conversation, turn: Turn, context: str, chat: ChatTokens, capacity: int,
                    max_new_tokens: int) -> list[int]:
    """The tokens the sample's cache must hold to answer `turn` (ending with the assistant prefix):
    the whole conversation when it and the answer fit in `capacity` tokens, else a window."""
    image_token = chat.tokenizer.format.image
    if not chat.tokenizer.additive:
        return _template_context(conv, turn, context, chat, capacity, max_new_tokens)
    if context == "none":
        question = place_placeholders(turn.question, turn.image_input_count, image_token)
        return conv.prompt + chat.question(question)
    new_images = max(0, turn.image_input_count - conv.shown)
    question = place_placeholders(turn.question, new_images, image_token)
    earlier = conv.cached if context == "own" else conv.teacher
    wanted = earlier + chat.question(question)
    conv.dropped_now = conv.window_start
    if len(wanted) + max_new_tokens <= capacity:
        return wanted
    budget = capacity - max_new_tokens
    first = len(conv.history)
    window = _window(conv, first, turn, chat)
    if len(window) > budget:
        conv.window_start = conv.dropped_now = first
        return window  # does not fit even alone: asked as is, it ends "cache_full"
    while first > 0:
        wider = _window(conv, first - 1, turn, chat)
        if len(wider) > budget:
            break
        first, window = first - 1, wider
    conv.window_start = conv.dropped_now = first
    return window


def _window(conv: _Conversation, first: int, turn: Turn, chat: ChatTokens) -> list[int]:
    """prompt + history[first:] + the current question, every image placed where the window first
    needs it (all images of its first turn in front of that question)."""
    tokens = list(conv.prompt)
    shown = 0
    for earlier, answer in conv.history[first:]:
        new = max(0, earlier.image_input_count - shown)
        tokens += chat.question(place_placeholders(earlier.question, new, chat.tokenizer.format.image)) + answer
        shown += new
    new = max(0, turn.image_input_count - shown)
    return tokens + chat.question(place_placeholders(turn.question, new, chat.tokenizer.format.image))


def _template_context(conv: _Conversation, turn: Turn, context: str, chat: ChatTokens, capacity: int,
                      max_new_tokens: int) -> list[int]:
    """`_wanted_context` for a checkpoint's own template: the conversation as text (the system prompt,
    the earlier questions with the mode's answers: own = the decoded answers, teacher = the references;
    the question) rendered and tokenized whole, as its processor does each turn; earlier turns left
    out, oldest first, until it and the answer fit in `capacity`. The cache keeps whatever prefix the
    new rendering shares with it (`_common_prefix`)."""
    tokenizer = chat.tokenizer
    image = tokenizer.format.image
    if context == "none":
        history = []
    else:
        answers = [earlier.reference if context == "teacher" else tokenizer.decode(ids)
                   for earlier, ids in conv.history]
        history = list(zip((earlier for earlier, _ in conv.history), answers))
    first = 0 if context == "none" else conv.window_start
    while True:
        messages, shown = [Message("system", conv.study.system_prompt)], 0
        for earlier, answer in history[first:]:
            new = max(0, earlier.image_input_count - shown)
            messages += [Message("user", place_placeholders(earlier.question, new, image)),
                         Message("assistant", answer)]
            shown += new
        new = max(0, turn.image_input_count - shown)
        messages.append(Message("user", place_placeholders(turn.question, new, image)))
        wanted = tokenizer.encode_chat(messages, tokens_per_image=chat.tokens_per_image,
                                       add_generation_prompt=True).ids.tolist()
        if len(wanted) + max_new_tokens <= capacity or first >= len(history):
            break  # fits, or does not fit even alone: asked as is, it ends "cache_full"
        first += 1
    if context != "none":
        conv.window_start = conv.dropped_now = first
    return wanted


def stack_images(studies: Sequence[ChainStudy], max_images: int) -> tuple[np.ndarray, np.ndarray]:
    """float32[B, M, H, W] image slots and bool[B, M] mask (M = max_images); ValueError naming a
    study with more images than slots, or images of different sizes."""
    sizes = {tuple(s.images.shape[1:]) for s in studies if len(s.images)}
    if len(sizes) > 1:
        raise ValueError(f"studies have images of different sizes {sorted(sizes)}; resize them to the model's size")
    height, width = sizes.pop() if sizes else (1, 1)
    images = np.zeros((len(studies), max_images, height, width), np.float32)
    mask = np.zeros((len(studies), max_images), bool)
    for b, study in enumerate(studies):
        count = len(study.images)
        if count > max_images:
            raise ValueError(f"study {study.study_id!r} has {count} images, the model takes at most {max_images}")
        images[b, :count] = study.images
        mask[b, :count] = True
    return images, mask


def _checked_context(context: str) -> None:
    if context not in CHAIN_CONTEXTS:
        raise ValueError(f"unknown context mode {context!r}; expected one of {', '.join(CHAIN_CONTEXTS)}")


def run_chain(
    decoder: StepwiseDecoder,
    params: nnx.State,
    tokenizer: CXRTrekTokenizer,
    studies: Sequence[ChainStudy],
    *,
    context: str,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    sampling: SamplingConfig = GREEDY,
    rng: jax.Array | None = None,
    on_turn: Callable[[int, TurnResult], None] | None = None,
) -> list[list[TurnResult]]:
    """Run the studies' conversations together (one batch of len(studies) rows); one list of
    `TurnResult` per study, in asking order.

    max_new_tokens / min_new_tokens: per answer, end-of-turn included (see
    `answer_step`). on_turn(study_index, result) is called as turns finish.
    Raises ValueError naming the study and turn for an image count beyond the
    study's images, a missing reference in teacher mode, or more turns than
    the decoder's record holds.
    """
    _checked_context(context)
    if not studies:
        raise ValueError("run_chain needs at least one study")
    results: list[list[TurnResult]] = [[] for _ in studies]
    for index, study_results in stream_chain(decoder, params, tokenizer, studies, batch_size=len(studies),
                                             context=context, max_new_tokens=max_new_tokens,
                                             min_new_tokens=min_new_tokens, sampling=sampling, rng=rng,
                                             on_turn=on_turn, require_questions=True):
        results[index] = study_results
    return results


def stream_chain(
    decoder: StepwiseDecoder,
    params: nnx.State,
    tokenizer: CXRTrekTokenizer,
    studies: Iterable[ChainStudy],
    *,
    batch_size: int,
    context: str,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    sampling: SamplingConfig = GREEDY,
    rng: jax.Array | None = None,
    on_turn: Callable[[int, TurnResult], None] | None = None,
    require_questions: bool = False,
) -> Iterator[tuple[int, list[TurnResult]]]:
    """Continuous batching over a stream of studies: (index in `studies`, its `TurnResult`s) as
    each study's chain ends, in order of finishing.

    `batch_size` rows decode together; when a study's chain ends its row takes the next study of
    the stream (its images encoded and prompt prefilled by `StepwiseDecoder.admit`), so short and
    long chains do not wait for each other. Every turn is one `StepwiseDecoder.turn` (rewind,
    prefill of every asked row's chunk in one call, decoding) and one transfer of its answers.
    Memory holds `batch_size` studies (the stream is read as rows free up). Greedy answers equal
    those of each study decoded alone. Errors as `run_chain`; require_questions: ValueError
    when no study of the first batch has a question (`run_chain`'s "question script is empty").
    """
    _checked_context(context)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    grammar = decoder.grammar
    if grammar is not None and max_new_tokens < grammar.min_tokens:
        warnings.warn(f"max_new_tokens {max_new_tokens} is below the {grammar.min_tokens} tokens a box answer may "
                      "need: detection answers may be cut off before they parse", stacklevel=2)
    engine = _Engine(decoder, params, tokenizer, context, sampling, max_new_tokens, min_new_tokens, on_turn)
    pending = enumerate(studies)
    first = list(itertools.islice(pending, batch_size))
    if not first:
        return
    engine.start(first, jax.random.key(0) if rng is None else rng, require_questions)
    while True:
        yield from engine.finished()
        free = engine.free_rows()
        if free:
            arriving = list(itertools.islice(pending, len(free)))
            if arriving:
                engine.admit(free[: len(arriving)], arriving)
                continue  # a study without questions ends at once
        if not engine.running():
            return
        engine.run_turn()


class _Engine:
    """The rows of a running batch, their host bookkeeping (`_Conversation`) and the state."""

    def __init__(self, decoder: StepwiseDecoder, params: nnx.State, tokenizer: CXRTrekTokenizer, context: str,
                 sampling: SamplingConfig, max_new_tokens: int, min_new_tokens: int,
                 on_turn: Callable[[int, TurnResult], None] | None):
        self.decoder, self.params, self.context, self.sampling = decoder, params, context, sampling
        self.max_new_tokens, self.min_new_tokens, self.on_turn = max_new_tokens, min_new_tokens, on_turn
        self.chat = ChatTokens(tokenizer, decoder.model_config.tokens_per_image)
        self.rows: list[_Conversation | None] = []
        self.index: list[int] = []       # each row's study index in the stream
        self.state: ChainState | None = None

    def _conversations(self, arriving: list[tuple[int, ChainStudy]]) -> list[_Conversation]:
        """Fresh conversations, each checked (its first turn) before anything is compiled."""
        conversations = []
        for _, study in arriving:
            plan = study.plan()
            prompt = self.chat.prompt(study.system_prompt)
            conv = _Conversation(study, prompt, [], list(prompt), plan, next(plan, None))
            if conv.turn is not None:
                _check_turn(conv, conv.turn, self.context)
            conversations.append(conv)
        return conversations

    def _images(self, arriving: list[tuple[int, ChainStudy]]) -> tuple[np.ndarray, np.ndarray]:
        """`stack_images` of the studies; blank slots at the model's image size when none has images
        (so every admission has the shape the batch started with)."""
        config = self.decoder.model_config
        images, mask = stack_images([study for _, study in arriving], config.max_images)
        if not mask.any():
            size = config.vision.image_size
            images = np.zeros((*mask.shape, size, size), np.float32)
        return images, mask

    def _record_start(self, conv: _Conversation) -> None:
        fits = len(conv.prompt) <= self.decoder.spec.cache_length  # as `start_step`: a longer prompt is not written
        conv.cached = conv.prompt if fits else []

    def start(self, arriving: list[tuple[int, ChainStudy]], rng: jax.Array, require_questions: bool) -> None:
        images, image_mask = self._images(arriving)
        conversations = self._conversations(arriving)
        if require_questions and all(conv.turn is None for conv in conversations):
            raise ValueError("the question script is empty: no study has a question to ask")
        self.rows, self.index = list(conversations), [i for i, _ in arriving]
        self.state = self.decoder.start(self.params, images, image_mask, [c.prompt for c in conversations], rng)
        for conv in conversations:
            self._record_start(conv)

    def admit(self, rows: list[int], arriving: list[tuple[int, ChainStudy]]) -> None:
        images, image_mask = self._images(arriving)
        conversations = self._conversations(arriving)
        self.state = self.decoder.admit(self.params, self.state, rows, images, image_mask,
                                        [c.prompt for c in conversations])
        for row, conv, (index, _) in zip(rows, conversations, arriving):
            self._record_start(conv)
            self.rows[row], self.index[row] = conv, index

    def finished(self) -> Iterator[tuple[int, list[TurnResult]]]:
        """The studies whose chains have ended (their rows become free)."""
        for row, conv in enumerate(self.rows):
            if conv is not None and conv.turn is None:
                self.rows[row] = None
                yield self.index[row], conv.results

    def free_rows(self) -> list[int]:
        return [row for row, conv in enumerate(self.rows) if conv is None]

    def running(self) -> bool:
        return any(conv is not None for conv in self.rows)

    def run_turn(self) -> None:
        """Ask every running row its current turn (rewinding where its context changes), decode the
        answers, record them and move each plan on."""
        decoder, context, chat = self.decoder, self.context, self.chat
        began = time.perf_counter()
        wanted, keep, seen, chunks, stages, boxes = [], [], [], [], [], []
        image_id = chat.tokenizer.image_id
        for conv in self.rows:
            if conv is None:
                wanted.append(None)
                keep.append(0)
                seen.append(0)
                chunks.append(None)
                stages.append(0)
                boxes.append(False)
                continue
            if len(conv.results) >= decoder.spec.max_turns:
                raise ValueError(f"study {conv.study.study_id!r} has more than {decoder.spec.max_turns} turns "
                                 "(DecodeSpec.max_turns); raise max_turns")
            _check_turn(conv, conv.turn, context)
            want = _wanted_context(conv, conv.turn, context, chat, decoder.spec.cache_length, self.max_new_tokens)
            k = min(_common_prefix(conv.cached, want), len(want) - 1)
            conv.cached = conv.cached[:k]
            wanted.append(want)
            keep.append(k)
            seen.append(int(np.count_nonzero(np.asarray(conv.cached, np.int64) == image_id)))
            chunks.append(want[k:])
            stages.append(conv.turn.stage)
            boxes.append(is_box_turn(conv.turn.qtype))
        self.state, _ = decoder.turn(self.params, self.state, length=keep, image_tokens_seen=seen, chunks=chunks,
                                     stages=stages, sampling=self.sampling, max_new_tokens=self.max_new_tokens,
                                     min_new_tokens=self.min_new_tokens, constrained=boxes)
        tokens, counts, reasons, lengths = decoder.fetch((self.state.tokens, self.state.num_tokens,
                                                          self.state.stop_reason, self.state.length))
        latency = time.perf_counter() - began
        for b, conv in enumerate(self.rows):
            if conv is None:
                continue
            generated = [int(t) for t in tokens[b, : counts[b]]]
            _advance(conv, chunks[b], generated, int(lengths[b]), context, chat)
            result = _result(conv, generated, StopReason(int(reasons[b])), latency, context, chat.tokenizer)
            conv.overflowed = result.stop_reason == StopReason.CACHE_FULL.label
            if conv.overflowed and context == "own":
                conv.history.pop()  # not answered: no later window holds it
                conv.window_start = len(conv.history)
            conv.results.append(result)
            if self.on_turn is not None:
                self.on_turn(self.index[b], result)
            conv.turn = _next_turn(conv.plan, result.answer)


def _advance(conv: _Conversation, chunk: list[int], generated: list[int], length: int, context: str,
             chat: ChatTokens) -> None:
    """Update the sample's host copy of its cache, its history (and teacher context) after a turn."""
    asked = conv.cached + chunk
    written = asked + generated
    if length not in (len(conv.cached), len(written)):
        raise RuntimeError(f"study {conv.study.study_id!r}: cache length {length} disagrees with the host copy "
                           f"({len(conv.cached)} tokens before the turn, {len(written)} after)")
    conv.cached = written[:length]
    turn = conv.turn
    if context == "teacher":
        reference = chat.answer_body(turn.reference)
        conv.teacher = asked + reference
        conv.history.append((turn, reference))
    elif context == "own":
        conv.history.append((turn, list(generated)))
    conv.shown = max(conv.shown, turn.image_input_count)


def _result(conv: _Conversation, generated: list[int], reason: StopReason, latency: float, context: str,
            tokenizer: CXRTrekTokenizer) -> TurnResult:
    turn = conv.turn
    stops = tokenizer.stop_ids  # end-of-turn, and an imported checkpoint's other stop tokens (eos)
    ended = next((k for k, token in enumerate(generated) if token in stops), None)
    answer_tokens = tuple(generated if ended is None else generated[:ended])
    if ended is not None and ended == len(generated) - 1:
        ended = None  # the decoder's own stop (end-of-turn, or the end-of-turn closing a full answer)
    return TurnResult(
        study_id=conv.study.study_id, turn_index=turn.turn_index, stage=turn.stage, task_type=turn.task_type,
        qtype=turn.qtype, question=turn.question, reference=turn.reference,
        answer=tokenizer.decode(answer_tokens), answer_tokens=answer_tokens,
        num_generated_tokens=len(generated) if ended is None else ended + 1,
        stop_reason=reason.label if ended is None else StopReason.END_OF_TURN.label, latency_s=latency, context=context,
        context_dropped=conv.dropped_now,
    )


def _next_turn(plan: TurnPlan, answer: str) -> Turn | None:
    try:
        return plan.send(answer)
    except StopIteration:
        return None
