"""The CXRTrek tokenizer: byte-level BPE trained offline, saved in the Hugging Face format.

`CXRTrekTokenizer` wraps a `tokenizers.Tokenizer` (picklable, so it travels
to Grain workers) together with its `ChatFormat`, and is the one encoder of
the chat template for training, decoding and export:

- `encode_chat(messages, tokens_per_image=N)` encodes message by message and
  returns the ids plus `MessageSpan`s (which id ranges hold each message's
  role prefix, content and end-of-turn), so loss masks and stage labels are
  exact; each image placeholder becomes N copies of the image token id.
- `decode(ids)` turns generated ids back into text, stopping at the first
  end-of-turn (or eos) and skipping special tokens.
- `save(dir)` writes tokenizer.json, tokenizer_config.json (with the Jinja
  `chat_template`), special_tokens_map.json and cxrtrek_chat_format.json,
  loadable with `transformers.AutoTokenizer.from_pretrained(dir)`;
  `load_tokenizer(dir)` reads ours or a foreign Hugging Face directory.

Box markup tags (`<|ref|>`, `<|box|>`, ...) are added as non-special tokens:
never split, and kept when decoding.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from data_pipeline.schema.boxes import MARKUP_TOKENS
from data_pipeline.text.chat_template import (
    CHAT_FORMAT_FILE,
    ChatFormat,
    as_messages,
    jinja_template,
)
from data_pipeline.text.checkpoint_template import CheckpointTemplate, TemplateError
from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
from data_pipeline.schema.records import Message, Study

__all__ = [
    "CXRTrekTokenizer",
    "EncodedChat",
    "MessageSpan",
    "TOKENIZER_FILE",
    "load_tokenizer",
    "train_tokenizer",
    "training_texts",
]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


@dataclasses.dataclass(frozen=True)
class MessageSpan:
    """Where one message sits in `EncodedChat.ids` (half-open index ranges).

    [start, content_start): role prefix; [content_start, content_end): content
    (image placeholders expanded); [content_end, end): the turn's end (the
    end-of-turn token, or the format's `system_end` / `user_end` text).
    With a checkpoint's own template (`CheckpointTemplate`) an assistant span's
    [content_start, loss_end) are the answer tokens it is trained on (the
    template's answer, module docstring of `checkpoint_template`), and a
    message's [start, end) the tokens that begin within its rendering.
    """

    index: int
    role: str
    start: int
    content_start: int
    content_end: int
    end: int
    loss_end: int | None = None

    @property
    def answer(self) -> slice:
        """The tokens an assistant message is trained on: its content and its turn's end (CXRTrek
        format), or the template's answer tokens."""
        return slice(self.content_start, self.end if self.loss_end is None else self.loss_end)


@dataclasses.dataclass(frozen=True)
class EncodedChat:
    """An encoded conversation.

    ids: int32[T], starting with bos.
    spans: one per message, in order.
    num_images: image placeholders encoded (each expanded to tokens_per_image ids).
    generation_start: index of the trailing assistant prefix when a
        generation prompt was added, else None.
    """

    ids: np.ndarray
    spans: tuple[MessageSpan, ...]
    num_images: int
    generation_start: int | None = None


class CXRTrekTokenizer:
    """A `tokenizers.Tokenizer` plus the `ChatFormat` it encodes conversations with."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, fmt: ChatFormat = ChatFormat(), *, source: str = "tokenizer",
                 template: CheckpointTemplate | None = None):
        self._tokenizer = tokenizer
        self.format = fmt
        self.template = template
        added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        self._single_ids: dict[str, int] = {}
        for name, text in fmt.single_token_fields().items():
            token_id = tokenizer.token_to_id(text)
            if token_id is None or text not in added:
                raise ValueError(
                    f"{source}: ChatFormat.{name} {text!r} is not an added token of the tokenizer "
                    "(it could be split or merged with neighbouring text)"
                )
            self._single_ids[name] = token_id
        roles = ("system", "user", "assistant")
        self._prefix_ids = {role: self.encode_text(fmt.prefix(role)) for role in roles}
        self._end_ids = {role: ([self.end_of_turn_id] if fmt.turn_end(role) == fmt.end_of_turn
                                else self.encode_text(fmt.turn_end(role))) for role in roles}

    # --- ids of the control tokens -------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self._single_ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._single_ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._single_ids["pad"]

    @property
    def image_id(self) -> int:
        return self._single_ids["image"]

    @property
    def end_of_turn_id(self) -> int:
        return self._single_ids["end_of_turn"]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids an answer ends at: the end-of-turn id, and with a checkpoint's own template the other
        tokens its generation config stops at (`CheckpointTemplate.stop_tokens`), end-of-turn first."""
        extra = () if self.template is None else self.template.stop_tokens
        ids = [self.end_of_turn_id] + [self._tokenizer.token_to_id(t) for t in extra]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding rows must cover it)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def model_mismatch(self, image_token_id: int, vocab_size: int) -> str | None:
        """Why a model with this image token id and vocabulary size cannot use this tokenizer
        (its image token has another id, or it has more ids than the model's embedding rows);
        None when it can."""
        if self.image_id != image_token_id:
            return (f"image token {self.format.image!r} has id {self.image_id} in the tokenizer, "
                    f"but the model's image_token_id is {image_token_id}")
        if self.vocab_size > vocab_size:
            return f"the tokenizer has {self.vocab_size} ids, more than the model's vocab_size {vocab_size}"
        return None

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tokenizer

    def prefix_ids(self, role: str) -> tuple[int, ...]:
        """The ids of the role prefix that opens a message of `role`."""
        return tuple(self._prefix_ids[role])

    def encode_content(self, content: str, tokens_per_image: int = 1) -> tuple[np.ndarray, int]:
        """(ids of one message's content with each image placeholder expanded, placeholders found).

        A placeholder becomes `tokens_per_image` image ids; with the format's image_open /
        image_close (Gemma 3) the expanded text is encoded, so the text around the wrappers
        tokenizes as in the whole rendered string (e.g. newlines next to them)."""
        ids = np.asarray(self.encode_text(content), np.int32)
        is_image = ids == self.image_id
        images = int(is_image.sum())
        if images and (self.format.image_open or self.format.image_close):
            text = content.replace(self.format.image, self.format.expand_image(tokens_per_image))
            ids = np.asarray(self.encode_text(text), np.int32)
        elif images and tokens_per_image > 1:
            ids = np.repeat(ids, np.where(is_image, tokens_per_image, 1))
        return ids, images

    def end_ids(self, role: str) -> tuple[int, ...]:
        """The ids closing a message of `role` (the end-of-turn id, or the format's end text)."""
        return tuple(self._end_ids[role])

    # --- encoding ------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids; no bos, no expansion of image placeholders."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_chat(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        tokens_per_image: int = 1,
        add_generation_prompt: bool = False,
    ) -> EncodedChat:
        """Encode a conversation message by message.

        The ids equal those of the whole rendered template whenever every
        content string starts and ends at a token boundary: always for the
        CXRTrek format (its role prefixes and end-of-turn are special tokens);
        a foreign format's text prefixes should end in a special token or a
        newline. Each image placeholder in a user message becomes `tokens_per_image`
        copies of `image_id`, wrapped in the ids of the format's `image_open` /
        `image_close` text. Raises ValueError naming the message for bad
        roles or control tokens inside content (see `as_messages`).
        """
        if tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be >= 1, got {tokens_per_image}")
        if self.template is not None:
            return self._encode_with_template(messages, tokens_per_image, add_generation_prompt)
        pieces: list[np.ndarray] = [np.array([self.bos_id], np.int32)]
        spans = []
        length = 1
        num_images = 0
        for index, message in enumerate(as_messages(messages, self.format)):
            prefix = np.asarray(self._prefix_ids[message.role], np.int32)
            content, images = self.encode_content(message.content, tokens_per_image)
            num_images += images
            end_ids = np.asarray(self._end_ids[message.role], np.int32)
            start = length
            content_start = start + prefix.size
            content_end = content_start + content.size
            end = content_end + end_ids.size
            spans.append(MessageSpan(index, message.role, start, content_start, content_end, end))
            pieces += [prefix, content, end_ids]
            length = end
        generation_start = None
        if add_generation_prompt:
            generation_start = length
            pieces.append(np.asarray(self._prefix_ids["assistant"], np.int32))
        return EncodedChat(np.concatenate(pieces), tuple(spans), num_images, generation_start)

    @property
    def additive(self) -> bool:
        """Whether a conversation's ids are its messages' ids concatenated (the CXRTrek format); not
        with a checkpoint's own template, which is rendered and tokenized whole."""
        return self.template is None

    def _encode_with_template(self, messages, tokens_per_image: int, add_generation_prompt: bool) -> EncodedChat:
        """The conversation through the checkpoint's own template, as its processor tokenizes it."""
        given = as_messages(messages, self.format)
        # An empty system prompt is no system message (a template would still render its frame).
        checked = given[1:] if given and given[0].role == "system" and not given[0].content else given
        rendered = self.template.render(checked, image_expansion=self.format.expand_image(tokens_per_image),
                                        add_generation_prompt=add_generation_prompt, placeholder=self.format.image)
        add_special = not rendered.text.startswith(self.format.bos)
        encoding = self._tokenizer.encode(rendered.text, add_special_tokens=add_special)
        ids = np.asarray(encoding.ids, np.int32)
        starts = np.asarray([start for start, _ in encoding.offsets], np.int64)
        ends = np.asarray([end for _, end in encoding.offsets], np.int64)
        anchors = _token_anchors(starts, ends)
        token_at = lambda char: int(np.count_nonzero(anchors < char))  # tokens before char offset `char`
        answer = np.zeros(ids.size, bool)
        for a, b in rendered.answer_spans:  # transformers' rule: a token overlapping an answer
            answer |= (starts < b) & (ends > a) & (ends > starts)
        bounds = [token_at(c) for c in rendered.message_starts]
        spans, covered = [], np.zeros(ids.size, bool)
        for index, message in enumerate(checked):
            start, end = bounds[index], bounds[index + 1]
            if message.role != "assistant":
                spans.append(MessageSpan(index, message.role, start, start, end, end))
                continue
            trained = np.flatnonzero(answer[start:end]) + start
            if trained.size == 0 or trained[-1] - trained[0] + 1 != trained.size:
                raise TemplateError(f"message {index} (assistant): the template's answer is "
                                    f"{'empty' if trained.size == 0 else 'not one run of tokens'}")
            covered[trained] = True
            first, stop = int(trained[0]), int(trained[-1]) + 1
            spans.append(MessageSpan(index, "assistant", start, first, stop, end, loss_end=stop))
        if (answer & ~covered).any():
            raise TemplateError("the template marks tokens outside the assistant messages as answers")
        if len(checked) < len(given):  # the empty system prompt's place: no tokens, in front
            first = spans[0].start if spans else int(ids.size)
            spans = [MessageSpan(0, "system", first, first, first, first)] + [
                dataclasses.replace(span, index=span.index + 1) for span in spans]
        generation_start = None if rendered.generation_start is None else token_at(rendered.generation_start)
        num_images = sum(m.content.count(self.format.image) for m in checked if m.role == "user")
        return EncodedChat(ids, tuple(spans), num_images, generation_start)

    # --- decoding ------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_end_of_turn: bool = True) -> str:
        """Ids to text, skipping special tokens; stops at the first end-of-turn, eos or other stop id."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if stop_at_end_of_turn:
            stops = {self.eos_id, *self.stop_ids}
            for position, token_id in enumerate(ids):
                if token_id in stops:
                    ids = ids[:position]
                    break
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    # --- files ---------------------------------------------------------------------------
    def save(self, directory: str | Path, *, model_max_length: int = 8192) -> Path:
        """Write the Hugging Face tokenizer files and the chat format into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fmt = self.format
        self._tokenizer.save(str(directory / TOKENIZER_FILE), pretty=True)
        extra_special = list(dict.fromkeys([fmt.image, fmt.end_of_turn])) + [
            fmt.prefix(role) for role in ("system", "user", "assistant") if fmt.prefix(role) in self._added_special()
        ]
        special_map = {
            "bos_token": fmt.bos,
            "eos_token": fmt.eos,
            "pad_token": fmt.pad,
            "additional_special_tokens": extra_special,
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False,
            "chat_template": jinja_template(fmt) if self.template is None else self.template.chat_template,
        }
        _write_json(directory / SPECIAL_TOKENS_MAP_FILE, special_map)
        _write_json(directory / TOKENIZER_CONFIG_FILE, config)
        fmt.save(directory)
        if self.template is not None:
            self.template.save(directory)
        return directory

    def _added_special(self) -> set[str]:
        return {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}

    def __repr__(self) -> str:
        return f"CXRTrekTokenizer(vocab_size={self.vocab_size}, format={self.format})"


def _token_anchors(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """int64[T]: the char offset each token belongs at: its first character, or for a token with
    no characters (bos added by the tokenizer) the anchor of the token before it (-1 in front), so a
    token belongs to the message its first character is in."""
    anchors = np.where(ends > starts, starts, -1)
    return np.maximum.accumulate(anchors) if anchors.size else anchors


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(directory: str | Path, fmt: ChatFormat | None = None) -> CXRTrekTokenizer:
    """Load the tokenizer of a directory (ours, or a foreign Hugging Face one).

    The chat format is `fmt` when given, else the directory's
    cxrtrek_chat_format.json; a foreign directory without one needs `fmt`
    (or that file written next to its tokenizer). Reads tokenizer.json, or
    converts other HF tokenizer files through transformers (local files only).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    if fmt is None:
        if not (directory / CHAT_FORMAT_FILE).exists():
            raise FileNotFoundError(
                f"{directory}: no {CHAT_FORMAT_FILE}; write one declaring this tokenizer's bos/eos/pad/"
                "image/end-of-turn tokens and role prefixes, or pass a ChatFormat"
            )
        fmt = ChatFormat.load(directory)
    json_path = directory / TOKENIZER_FILE
    if json_path.exists():
        backend = tokenizers.Tokenizer.from_file(str(json_path))
    else:
        backend = _backend_via_transformers(directory)
    return CXRTrekTokenizer(backend, fmt, source=str(directory), template=CheckpointTemplate.load(directory))


def _backend_via_transformers(directory: Path) -> tokenizers.Tokenizer:
    import transformers  # heavy; only for foreign tokenizer formats

    try:
        hf = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{directory}: no {TOKENIZER_FILE} and transformers cannot load it: {err}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{directory}: tokenizer {type(hf).__name__} has no fast (tokenizers) backend")
    return backend


def training_texts(studies: Iterable[Study], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> Iterator[str]:
    """The texts a tokenizer learns from: the system prompt(s), then every question and answer."""
    yield system_prompt
    for study in studies:
        for message in study.messages or ():
            if message.role == "system":
                yield message.content
        for item in study.items:
            yield item.question
            yield item.answer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    fmt: ChatFormat = ChatFormat(),
    min_frequency: int = 2,
    extra_tokens: Sequence[str] = MARKUP_TOKENS,
) -> CXRTrekTokenizer:
    """Train a byte-level BPE tokenizer on `texts`; same texts in, same tokenizer out.

    vocab_size: upper bound on the total number of ids (all 256 bytes, the
        chat format's special tokens, merges and `extra_tokens`); smaller when
        the texts run out of pairs seen `min_frequency` times.
    Ids: special tokens first (pad=0, bos, eos, end_of_turn, image, role
    prefixes), then bytes and merges, then `extra_tokens` (non-special).
    Control strings inside the texts are cut out before training.
    """
    specials = [t for t in dict.fromkeys([fmt.pad, fmt.bos, fmt.eos, fmt.end_of_turn, fmt.image,
                                          fmt.system_prefix, fmt.user_prefix, fmt.assistant_prefix]) if t]
    extra = [t for t in dict.fromkeys(extra_tokens) if t not in specials]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(specials) + len(alphabet) + len(extra)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: needs at least {minimum} "
            f"({len(specials)} special + {len(alphabet)} bytes + {len(extra)} extra tokens)"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(extra),
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=alphabet,
    )
    splitter = re.compile("|".join(re.escape(t) for t in sorted(specials + extra, key=len, reverse=True)))

    def pieces() -> Iterator[str]:
        for text in texts:
            for piece in splitter.split(text):
                if piece:
                    yield piece

    backend.train_from_iterator(pieces(), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
    return CXRTrekTokenizer(backend, fmt)
