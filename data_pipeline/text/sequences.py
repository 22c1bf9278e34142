"""Staged training sequences: one study -> token ids, loss mask, stage ids, positions.

With stage context (the default) one sequence holds the whole staged
conversation, in the study's turn order:

    [bos][system][user: <image>.. Q1][assistant: A1][user: Q2][assistant: A2]...

Each image placeholder becomes `tokens_per_image` copies of the image token id,
in the question of the first turn that needs that image (the turn whose
`image_input_count` first covers it). The loss covers answer tokens only: the
answer text and its end-of-turn token (not the question, not the role
markers). Every token of a turn carries the turn's stage number (bos and
system tokens carry 0). Arrays are over target positions: for ids x[0..n),
`input_tokens = x[:-1]`, `target_tokens = x[1:]`, and `loss_mask`/`stage_ids`
describe the target token.

Ablation options (`SequenceConfig`): stage context off (each turn its own
sequence, with all images visible at that turn placed in its question), a
seeded shuffle of the stage order (turns within a stage keep their order), a
subset of stages, and `no_prior` (drop images beyond the current study and the
turns that need them).

A chain longer than `max_length` (`SequenceConfig.long_chains`):
  - "window" (the default): the chain becomes several sequences, windows over
    it. Every turn is trained (carries loss) in exactly one window; a window
    holds bos, the system prompt, every image its turns need (placed in its
    first question) and, before its trained turns, as many earlier turns as
    fit, newest first, as context without loss. The first window starts at
    the first turn; each later one keeps `window_context` of its text budget
    (max_length minus bos, system and image tokens) for earlier turns. A chain
    that fits stays one sequence, exactly as without windowing.
  - "truncate": one sequence; trailing turns that do not fit are dropped.
A turn that does not fit even alone (with its images) is dropped. Every
dropped turn and image is counted in `SequenceStats`, per stage too.

Answer flips (`SequenceConfig.answer_flips`, training only: `build_sequences` with an rng):
each bare "Yes." / "No." answer is replaced by the other with that probability and carries no
loss, so the turns after it learn from a context whose earlier answers may be wrong, as when a
model decodes a chain with its own answers (exposure bias; docs/notes/2026-12-grounding.md has what it did).
Only bare answers flip (with `closed_answers` "decisive" or "decisive_if_carried"): a flipped
"Yes. The heart is enlarged." would contradict itself and mark the flip.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT, derive_messages
from data_pipeline.text.decisive_answers import CutCounts, decisive_cut
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Message, QAItem, Study
from data_pipeline.schema.stages import NUM_STAGES, Stage
from data_pipeline.text.tokenizer import CXRTrekTokenizer

__all__ = [
    "CLOSED_ANSWERS",
    "LONG_CHAINS",
    "TRAINING_CONTEXTS",
    "SequenceConfig",
    "SequenceStats",
    "SequenceTooLongError",
    "TrainingSequence",
    "SequenceBuilder",
    "flip_answers",
    "build_sequences",
    "current_image_count",
    "turn_exclusion",
    "keeps_turn",
    "filter_turns",
    "system_prompt_of",
    "place_placeholders",
]

_PLACEHOLDER_WITH_NEWLINE = re.compile(re.escape(IMAGE_PLACEHOLDER) + r"\n?")
_LATER_STUDY_STAGES = (Stage.COMPARISON, Stage.FUTURE_TREND)
# How a chain longer than max_length is trained (module docstring).
LONG_CHAINS = ("window", "truncate")
# How the loss is spread over answer tokens (`SequenceConfig.loss_weighting`).
LOSS_WEIGHTINGS = ("token", "answer", "sqrt")
# What a closed answer trains on (`SequenceConfig.closed_answers`).
CLOSED_ANSWERS = ("full", "decisive", "decisive_if_carried")
# How a study's turns are grouped into training sequences (`SequenceConfig.context`); not the
# decoding context modes (own / teacher / none) of `cxrtrek_jax.contexts`.
TRAINING_CONTEXTS = ("on", "off", "shuffled")
# `SequenceStats` field counting the turns left out for each reason.
_EXCLUSION_COUNTS = {"stage": "turns_excluded_by_stage", "no_prior": "turns_dropped_no_prior",
                     "image_limit": "turns_dropped_image_limit"}


class SequenceTooLongError(ValueError):
    """The first turn of a sequence alone does not fit in `max_length` tokens."""


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """How studies become training sequences.

    max_length: most tokens in `input_tokens` (the full id sequence holds one more);
        None = not yet set (the input pipeline sets it to its largest length bucket).
    tokens_per_image: image token ids per image (the model's patch-token count);
        None = not yet set (a training run takes it from the model).
    context: "on" (one sequence per study, the staged context), "off" (one
        sequence per turn) or "shuffled" (stage order permuted per study, seeded
        by (`shuffle_seed`, study key); turns within a stage keep their order).
    stages: keep only turns of these stages (None = all).
    no_prior: drop images beyond the current study and the turns needing them.
    max_images: the model's image slots; turns that need more images than this
        (their `image_input_count`) are dropped and counted (None = no limit; the
        input pipeline needs it set, a training run takes it from the model).
    system_prompt: None = the study's own system message, else `DEFAULT_SYSTEM_PROMPT`.
    drop_unfittable: a turn that alone exceeds `max_length` (the first turn of
        the sequence with "truncate") is dropped and counted
        (`SequenceStats.unfittable`) instead of raising `SequenceTooLongError`.
    long_chains: "window" or "truncate" (module docstring).
    window_context: with "window", the fraction of a later window's text budget
        kept for earlier turns as context, in [0, 1).
    loss_weighting: "token" (every answer token weighs 1: a 60-token report outweighs
        a one-word view answer 30 to 1) or "answer" (each trained answer weighs 1 in
        all, spread evenly over its tokens and end-of-turn: `loss_mask` holds 1/n on
        an answer of n target tokens; the train step's loss, accuracy and per-stage
        figures, weighted by `loss_mask`, become means over answers and its
        `answer_tokens` a count of answers) or "sqrt" (between the two: an answer of n target
        tokens weighs sqrt(n) in all, 1/sqrt(n) per token, so a 60-token report outweighs a
        one-word view answer about 5.5 to 1 instead of 30 to 1; the train step's figures are
        then means over these weights).
    closed_answers: "full" (the answers as given), "decisive" (yes/no and single-choice
        answers cut to "Yes." / "No." / "<letter>.", `decisive_answers`: the token the images
        decide is then a third to a half of the answer's loss instead of about an eighth) or
        "decisive_if_carried" (cut only where the study's stage-3 turns carry the words the cut
        removes, else kept whole: `decisive_answers`' conditional cut).
    decisive_stages: with closed_answers "decisive" or "decisive_if_carried", cut only the
        answers of these stages (None = every stage).
    answer_flips: probability in [0, 1) that a bare "Yes." / "No." answer of a yes/no turn is
        flipped to the other and trained without loss (module docstring); applied only when
        `build_sequences` is given an rng (training), so evaluation sees the data as it is.
    """

    max_length: int | None = None
    tokens_per_image: int | None = None
    context: str = "on"
    shuffle_seed: int = 0
    stages: tuple[int, ...] | None = None
    no_prior: bool = False
    max_images: int | None = None
    system_prompt: str | None = None
    drop_unfittable: bool = False
    long_chains: str = "window"
    window_context: float = 0.5
    loss_weighting: str = "token"
    closed_answers: str = "full"
    decisive_stages: tuple[int, ...] | None = None
    answer_flips: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.answer_flips < 1.0:
            raise ValueError(f"answer_flips must be in [0, 1), got {self.answer_flips}")
        if self.closed_answers not in CLOSED_ANSWERS:
            raise ValueError(f"closed_answers must be one of {CLOSED_ANSWERS}, got {self.closed_answers!r}")
        if self.decisive_stages is not None:
            if self.closed_answers == "full":
                raise ValueError(f"decisive_stages {self.decisive_stages!r} needs closed_answers 'decisive' or "
                                 f"'decisive_if_carried', got {self.closed_answers!r}")
            object.__setattr__(self, "decisive_stages", _stage_set(self.decisive_stages, "decisive_stages"))
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.context not in TRAINING_CONTEXTS:
            raise ValueError(f"context must be one of {TRAINING_CONTEXTS}, got {self.context!r}")
        if self.long_chains not in LONG_CHAINS:
            raise ValueError(f"long_chains must be one of {LONG_CHAINS}, got {self.long_chains!r}")
        if not 0.0 <= self.window_context < 1.0:
            raise ValueError(f"window_context must be in [0, 1), got {self.window_context}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.tokens_per_image is not None and self.tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be >= 1, got {self.tokens_per_image}")
        if self.stages is not None:
            object.__setattr__(self, "stages", _stage_set(self.stages, "stages"))

    @property
    def stage_context(self) -> bool:
        """One sequence per study (context "on" or "shuffled")."""
        return self.context != "off"

    @property
    def shuffle_stages(self) -> bool:
        return self.context == "shuffled"

    def check_complete(self) -> "SequenceConfig":
        """self, or a ValueError naming the size field still unset (None)."""
        for name in ("max_length", "tokens_per_image"):
            if getattr(self, name) is None:
                raise ValueError(f"SequenceConfig.{name} is not set: give it (the input pipeline sets "
                                 "max_length from its length buckets, a training run tokens_per_image "
                                 "from the model)")
        return self


def _stage_set(stages, field: str) -> tuple[int, ...]:
    """`stages` (numbers or names) as sorted unique stage numbers; ValueError naming `field` when empty."""
    parsed = tuple(sorted({int(Stage.parse(s)) for s in stages}))
    if not parsed:
        raise ValueError(f"{field} must name at least one stage (or be None for all)")
    return parsed


@dataclasses.dataclass(frozen=True)
class SequenceStats:
    """Counts of one or more `build_sequences` calls (add them up with `+`).

    turns_in = turns_kept + turns_excluded_by_stage + turns_dropped_no_prior
    + turns_dropped_image_limit + turns_dropped_truncation (`turns_dropped`: the last
    three). turns_kept counts
    trained turns (with loss); turns_windowed those of them trained in a window
    that lacks some earlier turn of the chain. images_dropped: study images that
    appear in none of the study's sequences. unfittable: turns (with
    "truncate": sequences) that did not fit alone (their turns count as dropped
    by truncation).
    stage_trained / stage_windowed / stage_dropped: the same per stage, index
    1..8 (index 0 unused); dropped = not trained, for any reason but the
    `stages` filter. turns_flipped: kept turns whose answer was flipped
    (`SequenceConfig.answer_flips`): in their sequence as context, without loss (counted
    in turns_kept and stage_trained, which count the turns each study offers for training).
    answers_cut / answers_kept_whole / answers_cut_uncarried: the closed-answer cut's
    `CutCounts` (`SequenceConfig.closed_answers`), over all the study's turns of `decisive_stages`.
    """

    studies: int = 0
    sequences: int = 0
    turns_in: int = 0
    turns_kept: int = 0
    turns_excluded_by_stage: int = 0
    turns_dropped_no_prior: int = 0
    turns_dropped_image_limit: int = 0
    turns_dropped_truncation: int = 0
    images_dropped: int = 0
    unfittable: int = 0
    turns_windowed: int = 0
    turns_flipped: int = 0
    answers_cut: int = 0
    answers_kept_whole: int = 0
    answers_cut_uncarried: int = 0
    stage_trained: tuple[int, ...] = (0,) * (NUM_STAGES + 1)
    stage_windowed: tuple[int, ...] = (0,) * (NUM_STAGES + 1)
    stage_dropped: tuple[int, ...] = (0,) * (NUM_STAGES + 1)

    def __add__(self, other: "SequenceStats") -> "SequenceStats":
        def add(a, b):
            return tuple(x + y for x, y in zip(a, b)) if isinstance(a, tuple) else a + b

        return SequenceStats(
            **{f.name: add(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)}
        )

    @property
    def turns_dropped(self) -> int:
        """Turns not trained for a reason other than the `stages` selection."""
        return self.turns_in - self.turns_kept - self.turns_excluded_by_stage

    def per_stage(self) -> dict[int, dict[str, int]]:
        """stage -> {"trained", "windowed", "dropped"} for every stage with a turn."""
        return {stage: {"trained": self.stage_trained[stage], "windowed": self.stage_windowed[stage],
                        "dropped": self.stage_dropped[stage]}
                for stage in range(1, NUM_STAGES + 1)
                if self.stage_trained[stage] or self.stage_dropped[stage]}


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingSequence:
    """One unbatched training example (all arrays of length T = `len(self)`).

    input_tokens int32[T]; target_tokens int32[T] (next token);
    loss_mask float32[T] (> 0 where the target is an answer token or its end-of-turn:
        1.0, or 1/n resp. 1/sqrt(n) on an answer of n such tokens with `loss_weighting`
        "answer" resp. "sqrt");
    stage_ids int32[T] (stage of the target token's turn, 0 for bos/system);
    positions int32[T] (0..T-1).
    image_indices: indices into `Study.images` of the images whose
        placeholders appear in `input_tokens`, in placeholder order.
    turn_indices: indices into `Study.items` of the turns, in sequence order.
    context_turns: how many leading `turn_indices` are context only (no loss; a
        window's earlier turns); the rest are trained.
    """

    study_id: str
    input_tokens: np.ndarray
    target_tokens: np.ndarray
    loss_mask: np.ndarray
    stage_ids: np.ndarray
    positions: np.ndarray
    image_indices: tuple[int, ...]
    turn_indices: tuple[int, ...]
    context_turns: int = 0

    @property
    def trained_turns(self) -> tuple[int, ...]:
        return self.turn_indices[self.context_turns :]

    def __len__(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def num_images(self) -> int:
        return len(self.image_indices)


def system_prompt_of(study: Study, override: str | None = None) -> str:
    """`override`, else the study's first system message, else `DEFAULT_SYSTEM_PROMPT`."""
    if override is not None:
        return override
    for message in study.messages or ():
        if message.role == "system":
            return message.content
    return DEFAULT_SYSTEM_PROMPT


def current_image_count(study: Study) -> int:
    """How many leading `study.images` belong to the current study.

    Images are ordered current-study views first; prior (and later) study
    views are introduced lazily by the first turn that needs them, a stage-5
    (comparison) or stage-6 (future trend) turn. So: all images when the study
    has neither a prior nor a later study, else the images visible at the turns
    before the first stage-5/6 turn.
    """
    if not (study.has_prior or study.has_later):
        return study.num_images
    count = 0
    for item in study.items:
        if item.stage in _LATER_STUDY_STAGES:
            break
        count = max(count, item.image_input_count)
    return count


def _check_image_counts(study: Study) -> None:
    for index, item in enumerate(study.items):
        if not 0 <= item.image_input_count <= study.num_images:
            raise ValueError(
                f"study {study.key!r} turn {index}: image_input_count {item.image_input_count} "
                f"outside 0..{study.num_images} (the study's image count)"
            )


def turn_exclusion(item: QAItem, stages: Sequence[int] | None, no_prior: bool, current_images: int) -> str | None:
    """Why the stage / no-prior filter leaves `item` out, or None when it keeps the turn.

    "stage": `stages` is given and the turn's stage is not in it; "no_prior": `no_prior` is
    set and the turn needs more images than the study's own (`current_images`, the study's
    `current_image_count`). The one definition of which turns an experiment trains on.
    """
    if stages is not None and item.stage not in stages:
        return "stage"
    if no_prior and item.image_input_count > current_images:
        return "no_prior"
    return None


def keeps_turn(study: Study, item: QAItem, stages: Sequence[int] | None, no_prior: bool) -> bool:
    """Whether the stage / no-prior filter keeps `item` of `study` (`turn_exclusion` is None)."""
    return turn_exclusion(item, stages, no_prior, current_image_count(study)) is None


def filter_turns(study: Study, stages: Sequence[int] | None, no_prior: bool) -> Study:
    """The study with only the turns the stage / no-prior filter keeps (`turn_exclusion`).

    Its released chat `messages` (if any) are rebuilt from the kept turns.
    """
    current = current_image_count(study)
    items = tuple(item for item in study.items if turn_exclusion(item, stages, no_prior, current) is None)
    messages = None if study.messages is None else derive_messages(items, system_prompt_of(study))
    return study.replace(items=items, messages=messages)


def _select_turns(study: Study, config: SequenceConfig) -> tuple[list[int], dict[str, int]]:
    """Indices of the turns to use, in sequence order, and the exclusion counts."""
    current = current_image_count(study)
    counts = {name: 0 for name in _EXCLUSION_COUNTS.values()}
    turns = []
    for t, item in enumerate(study.items):
        reason = turn_exclusion(item, config.stages, config.no_prior, current)
        if reason is None and config.max_images is not None and item.image_input_count > config.max_images:
            reason = "image_limit"
        if reason is None:
            turns.append(t)
        else:
            counts[_EXCLUSION_COUNTS[reason]] += 1
    if config.shuffle_stages:
        rng = np.random.default_rng([config.shuffle_seed, zlib.crc32(study.key.encode("utf-8"))])
        present = sorted({study.items[t].stage for t in turns})
        order = {stage: rank for rank, stage in enumerate(rng.permutation(present).tolist())}
        turns = sorted(turns, key=lambda t: order[study.items[t].stage])  # stable: keeps turn order
    return turns, counts


def place_placeholders(question: str, new_images: int, image_token: str) -> str:
    """The question with exactly `new_images` placeholders, as the data's own when the count matches.

    Otherwise every placeholder (and the newline right after it) is removed and
    `new_images` placeholders, one per line, are put in front. The data's
    `<image>` is translated to the tokenizer's image token string.
    """
    if question.count(IMAGE_PLACEHOLDER) != new_images:
        question = (IMAGE_PLACEHOLDER + "\n") * new_images + _PLACEHOLDER_WITH_NEWLINE.sub("", question)
    return question.replace(IMAGE_PLACEHOLDER, image_token)


def _conversation(
    study: Study, turns: Sequence[int], system_prompt: str, image_token: str
) -> tuple[list[Message], list[int]]:
    """Messages for `turns` and the cumulative image count after each turn."""
    messages = [Message("system", system_prompt)]
    introduced: list[int] = []
    shown = 0
    for t in turns:
        item: QAItem = study.items[t]
        new = max(0, item.image_input_count - shown)
        messages.append(Message("user", place_placeholders(item.question, new, image_token)))
        messages.append(Message("assistant", item.answer))
        shown += new
        introduced.append(shown)
    return messages, introduced


def _token_weight(loss_weighting: str, n: int) -> float:
    """The loss weight of each of an answer's n target tokens (`SequenceConfig.loss_weighting`)."""
    n = max(n, 1)
    return {"token": 1.0, "answer": 1.0 / n, "sqrt": 1.0 / math.sqrt(n)}[loss_weighting]


def _encode(study: Study, turns: Sequence[int], trained_from: int, tokenizer: CXRTrekTokenizer,
            config: SequenceConfig, flipped: frozenset[int] = frozenset()) -> TrainingSequence:
    """The sequence of `turns` (all of which fit), with loss on `turns[trained_from:]` only,
    except the `flipped` turns (study item indices)."""
    messages, introduced = _conversation(
        study, turns, system_prompt_of(study, config.system_prompt), tokenizer.format.image
    )
    encoded = tokenizer.encode_chat(messages, tokens_per_image=config.tokens_per_image)
    ids = encoded.ids
    spans = encoded.spans  # [system, user 0, assistant 0, user 1, assistant 1, ...]
    token_stage = np.zeros(ids.shape, np.int32)
    token_loss = np.zeros(ids.shape, np.float32)
    for j in range(len(turns)):
        user, assistant = spans[1 + 2 * j], spans[2 + 2 * j]
        token_stage[user.start : assistant.end] = study.items[turns[j]].stage
        if j >= trained_from and turns[j] not in flipped:
            answer = assistant.answer
            token_loss[answer] = _token_weight(config.loss_weighting, answer.stop - answer.start)
    num_images = introduced[-1]
    image_tokens = int(np.count_nonzero(ids == tokenizer.image_id))
    if image_tokens != num_images * config.tokens_per_image:
        raise ValueError(
            f"study {study.key!r}: {image_tokens} image token ids for {num_images} images "
            f"x {config.tokens_per_image} tokens per image"
        )
    if ids.size - 1 > config.max_length:
        raise AssertionError(f"study {study.key!r}: a window of {ids.size - 1} tokens > {config.max_length}")
    return TrainingSequence(
        study_id=study.key,
        input_tokens=ids[:-1].astype(np.int32),
        target_tokens=ids[1:].astype(np.int32),
        loss_mask=token_loss[1:],
        stage_ids=token_stage[1:],
        positions=np.arange(ids.size - 1, dtype=np.int32),
        image_indices=tuple(range(num_images)),
        turn_indices=tuple(turns),
        context_turns=trained_from,
    )


class _ChainLengths:
    """Input-token counts of windows over one chain, from per-message encodings (cached), equal
    to `len(input_tokens)` of the encoded window: messages are encoded one at a time
    (`CXRTrekTokenizer.encode_chat`), so a window's length is the sum of its messages'."""

    def __init__(self, study: Study, turns: Sequence[int], tokenizer: CXRTrekTokenizer, config: SequenceConfig):
        self.study, self.turns, self.tokenizer, self.config = study, turns, tokenizer, config
        system = system_prompt_of(study, config.system_prompt)
        self.system = system
        self._encoded: dict[tuple[int, int], int] = {}
        self.head = 1 + self._message("system", system)  # bos + system message
        self._users: dict[tuple[int, int], int] = {}
        self._answers = [self._message("assistant", study.items[t].answer) for t in turns]

    def _message(self, role: str, content: str) -> int:
        ids, _ = self.tokenizer.encode_content(content, self.config.tokens_per_image)
        return len(self.tokenizer.prefix_ids(role)) + len(ids) + len(self.tokenizer.end_ids(role))

    def _user(self, j: int, new_images: int) -> int:
        key = (j, new_images)
        if key not in self._users:
            question = place_placeholders(self.study.items[self.turns[j]].question, new_images,
                                          self.tokenizer.format.image)
            self._users[key] = self._message("user", question)
        return self._users[key]

    def window(self, first: int, end: int) -> int:
        """Input tokens of the window over turns[first:end] (full ids minus one)."""
        if not self.tokenizer.additive:  # a checkpoint's template: the window encoded whole
            if (first, end) not in self._encoded:
                messages, _ = _conversation(self.study, self.turns[first:end], self.system,
                                            self.tokenizer.format.image)
                encoded = self.tokenizer.encode_chat(messages, tokens_per_image=self.config.tokens_per_image)
                self._encoded[(first, end)] = encoded.ids.size - 1
            return self._encoded[(first, end)]
        total, shown = self.head, 0
        for j in range(first, end):
            count = self.study.items[self.turns[j]].image_input_count
            new = max(0, count - shown)
            total += self._user(j, new) + self._answers[j]
            shown += new
        return total - 1

    def image_tokens(self, first: int, end: int) -> int:
        return max(self.study.items[self.turns[j]].image_input_count for j in range(first, end)) \
            * self.config.tokens_per_image


def _windows(lengths: _ChainLengths, n: int, config: SequenceConfig) -> tuple[list[tuple[int, int, int]], list[int]]:
    """([(context start, trained start, end)] over turn positions 0..n, [unfittable positions])."""
    windows, unfittable = [], []
    start = 0
    while start < n:
        if lengths.window(start, start + 1) > config.max_length:
            unfittable.append(start)
            start += 1
            continue
        end = start + 1
        while end < n:
            budget = config.max_length
            if windows:
                text = config.max_length - lengths.head - lengths.image_tokens(start, end + 1)
                budget -= int(config.window_context * max(text, 0))
            if lengths.window(start, end + 1) > budget:
                break
            end += 1
        first = start
        while first > 0 and lengths.window(first - 1, end) <= config.max_length:
            first -= 1
        windows.append((first, start, end))
        start = end
    return windows, unfittable


def _truncated(lengths: _ChainLengths, n: int, config: SequenceConfig) -> tuple[list[tuple[int, int, int]], list[int]]:
    """The "truncate" plan: one window from the first turn, as many turns as fit (the first
    turn unfittable when it alone does not)."""
    end = 0
    while end < n and lengths.window(0, end + 1) <= config.max_length:
        end += 1
    return ([(0, 0, end)], []) if end else ([], [0])


def _plan(study: Study, group: list[int], tokenizer: CXRTrekTokenizer, config: SequenceConfig):
    lengths = _ChainLengths(study, group, tokenizer, config)
    plan = _windows if config.long_chains == "window" else _truncated
    windows, unfittable = plan(lengths, len(group), config)
    if unfittable and not config.drop_unfittable:
        j = unfittable[0]
        raise SequenceTooLongError(
            f"study {study.key!r}: turn (item {group[j]}) needs {lengths.window(j, j + 1)} "
            f"input tokens with its images, more than max_length={config.max_length}"
        )
    return windows, unfittable


_FLIPPED = {"Yes.": "No.", "No.": "Yes."}


def flip_answers(study: Study, turns: Sequence[int], probability: float,
                 rng: np.random.Generator) -> tuple[Study, frozenset[int]]:
    """`study` with each bare "Yes." / "No." answer among `turns` (item indices) of a yes/no turn
    flipped with `probability` (one uniform draw per such turn, in turn order), and the flipped
    item indices. Other answers never flip and draw nothing."""
    items = list(study.items)
    flipped = set()
    for t in turns:
        item = items[t]
        answer = item.answer.strip()
        if item.qtype != "yes_no" or answer not in _FLIPPED:
            continue
        if rng.random() < probability:
            items[t] = dataclasses.replace(item, answer=_FLIPPED[answer])
            flipped.add(t)
    if not flipped:
        return study, frozenset()
    messages = None if study.messages is None else derive_messages(tuple(items), system_prompt_of(study))
    return study.replace(items=tuple(items), messages=messages), frozenset(flipped)


def build_sequences(
    study: Study, tokenizer: CXRTrekTokenizer, config: SequenceConfig,
    rng: np.random.Generator | None = None,
) -> tuple[list[TrainingSequence], SequenceStats]:
    """The training sequence(s) of one study and what was left out.

    Raises ValueError naming the study for an `image_input_count` outside
    0..num_images, and `SequenceTooLongError` when a turn alone (with
    "truncate": a sequence's first turn) exceeds `config.max_length` (unless
    `config.drop_unfittable`). A study with no turn left after the
    stage/no_prior filters gives no sequence. `config.max_length` and
    `config.tokens_per_image` must be set (ValueError otherwise). With `rng` (training) and
    `config.answer_flips` > 0, answers are flipped (`flip_answers`) after the turn selection.
    """
    config.check_complete()
    _check_image_counts(study)
    cut = CutCounts()
    if config.closed_answers != "full":
        study, cut = decisive_cut(study, config.decisive_stages,
                                  only_if_carried=config.closed_answers == "decisive_if_carried")
    turns, counts = _select_turns(study, config)
    flipped: frozenset[int] = frozenset()
    if rng is not None and config.answer_flips > 0.0:
        study, flipped = flip_answers(study, turns, config.answer_flips, rng)
    groups: Iterable[list[int]] = [turns] if config.stage_context else [[t] for t in turns]
    sequences: list[TrainingSequence] = []
    unfittable = 0
    trained: set[int] = set()
    windowed_turns: set[int] = set()
    for group in groups:
        if not group:
            continue
        windows, bad = _plan(study, group, tokenizer, config)
        unfittable += len(bad)
        for first, start, end in windows:
            sequences.append(_encode(study, group[first:end], start - first, tokenizer, config, flipped))
            trained.update(group[start:end])
            if first > 0:
                windowed_turns.update(group[start:end])
    used_images = {i for s in sequences for i in s.image_indices}
    stage_trained = [0] * (NUM_STAGES + 1)
    stage_windowed = [0] * (NUM_STAGES + 1)
    stage_dropped = [0] * (NUM_STAGES + 1)
    for index, item in enumerate(study.items):
        if not 1 <= item.stage <= NUM_STAGES or turn_exclusion(item, config.stages, no_prior=False, current_images=0) == "stage":
            continue  # excluded by the stage filter (or a stage validation rejects), not dropped
        (stage_trained if index in trained else stage_dropped)[item.stage] += 1
        stage_windowed[item.stage] += index in windowed_turns
    kept = len(trained)
    stats = SequenceStats(
        studies=1,
        sequences=len(sequences),
        turns_in=len(study.items),
        turns_kept=kept,
        turns_dropped_truncation=len(turns) - kept,
        images_dropped=study.num_images - len(used_images),
        unfittable=unfittable,
        turns_windowed=len(windowed_turns),
        turns_flipped=len(flipped & trained),
        answers_cut=cut.cut,
        answers_kept_whole=cut.kept_whole,
        answers_cut_uncarried=cut.cut_uncarried,
        stage_trained=tuple(stage_trained),
        stage_windowed=tuple(stage_windowed),
        stage_dropped=tuple(stage_dropped),
        **counts,
    )
    return sequences, stats


class SequenceBuilder:
    """Picklable study -> (sequences, stats) transform for the input pipeline."""

    def __init__(self, tokenizer: CXRTrekTokenizer, config: SequenceConfig):
        self.tokenizer = tokenizer
        self.config = config

    def __call__(self, study: Study) -> tuple[list[TrainingSequence], SequenceStats]:
        return build_sequences(study, self.tokenizer, self.config)
