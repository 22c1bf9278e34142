"""A pretrained checkpoint's own chat template: conversations rendered and tokenized exactly as the
checkpoint's Hugging Face processor renders and tokenizes them.

Models trained here use the CXRTrek format (`chat_template.ChatFormat`: fixed role prefixes and turn
ends). A checkpoint imported from Hugging Face (llava-1.5, Gemma 3 / MedGemma, a ChatML model) was
trained with its own Jinja template, which a `ChatFormat` cannot always express (llava-1.5 renders the
images of a message first and upper-cases the role; Gemma 3 folds the system prompt into the first user
turn). `CheckpointTemplate` keeps that template verbatim and reproduces what
`processor.apply_chat_template(messages, tokenize=True)` does:

1. messages become Hugging Face messages: a user message's image placeholders (`<image>`, as our
   studies write them) become `{"type": "image"}` items in front of its text item (multimodal content
   lists), or stay in the text as the template's image marker for a template that takes plain strings;
2. the template renders them in a sandboxed Jinja environment with transformers' settings
   (trim_blocks, lstrip_blocks, `{% generation %}` blocks, `raise_exception`, `tojson`), the
   tokenizer's special tokens as variables; nothing of the template runs outside the sandbox;
3. each image marker the processor replaces (llava: `<image>`; Gemma 3: `<start_of_image>`) becomes
   `image_open + image * N + image_close` (N tokens per image);
4. the text is tokenized whole, with the tokenizer's own special tokens (bos) unless the text already
   starts with bos, as the processor decides.

The answer tokens (the loss mask) are the tokens overlapping a `{% generation %}` block where the
template has them (transformers' `return_assistant_tokens_mask` rule); otherwise, for each assistant
message, what the conversation rendered through that message adds after the generation prompt of the
conversation before it (e.g. "A<end_of_turn>\\n"): what the model must write when it answers.

`TEMPLATE_FILE` (cxrtrek_checkpoint_template.json) holds it next to the tokenizer.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Message

__all__ = [
    "CONTENT_STYLES",
    "TEMPLATE_FILE",
    "CheckpointTemplate",
    "RenderedChat",
    "TemplateError",
    "hf_messages",
]

TEMPLATE_FILE = "cxrtrek_checkpoint_template.json"
# How message content reaches the template: "lists" of {"type": "image"} / {"type": "text"} items
# (multimodal processors' templates), or "strings" with the image marker in the text.
CONTENT_STYLES = ("lists", "strings")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ValueError):
    """A conversation the checkpoint's template cannot render, or a template whose output cannot be
    split into messages (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class RenderedChat:
    """A conversation rendered by the template, images expanded.

    text: the whole text the tokenizer encodes.
    message_starts: char offset in `text` where each message's rendering begins, plus len(text) at
        the end (before the generation prompt, when one was added): len(messages) + 1 offsets.
    answer_spans: [(start, end)) char ranges of the answers the model is trained to write.
    generation_start: char offset of the generation prompt, or None.
    """

    text: str
    message_starts: tuple[int, ...]
    answer_spans: tuple[tuple[int, int], ...]
    generation_start: int | None


def hf_messages(messages: Iterable[Message | Mapping[str, Any]], style: str, image_marker: str,
                placeholder: str = IMAGE_PLACEHOLDER) -> list[dict]:
    """Our messages (content strings with image `placeholder`s: the tokenizer's image token) as Hugging
    Face chat messages.

    style "lists": content [{"type": "image"} x n, {"type": "text", "text": ...}] with the
    placeholders (and the newline after each) taken out of the text, as a user writes them for
    `processor.apply_chat_template`; "strings": the text, each placeholder written as `image_marker`.
    """
    if style not in CONTENT_STYLES:
        raise ValueError(f"unknown content style {style!r}; expected one of {CONTENT_STYLES}")
    out = []
    for index, message in enumerate(messages):
        role, content = (message["role"], message["content"]) if isinstance(message, Mapping) \
            else (message.role, message.content)
        if not isinstance(content, str):
            raise TemplateError(f"message {index}: content must be a string, got {type(content).__name__}")
        if style == "strings":
            out.append({"role": role, "content": content.replace(placeholder, image_marker)})
            continue
        images = content.count(placeholder)
        text = re.sub(re.escape(placeholder) + r"\n?", "", content)
        items = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": text}]
        out.append({"role": role, "content": items})
    return out


@dataclasses.dataclass(frozen=True)
class CheckpointTemplate:
    """A checkpoint's chat template and how its processor feeds it.

    chat_template: the Jinja source, verbatim.
    source: the file it was read from (e.g. "chat_template.json"), for messages and docs.
    content_style: "lists" or "strings" (`CONTENT_STYLES`).
    image_marker: the text the processor replaces by each image's token run ("<image>" for llava,
        "<start_of_image>" for Gemma 3); the template writes it where an image goes.
    variables: the template's variables besides the messages: the tokenizer's special tokens
        (bos_token, eos_token, ...), as `processor.apply_chat_template` passes them.
    stop_tokens: the tokens generation stops at besides the end-of-turn token (the checkpoint's
        generation_config.json `eos_token_id` list, e.g. Gemma 3's <eos> beside <end_of_turn>).
    """

    chat_template: str
    source: str
    content_style: str
    image_marker: str
    variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stop_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.chat_template, str) or not self.chat_template.strip():
            raise ValueError("CheckpointTemplate.chat_template must be a non-empty string")
        if self.content_style not in CONTENT_STYLES:
            raise ValueError(f"CheckpointTemplate.content_style must be one of {CONTENT_STYLES}, "
                             f"got {self.content_style!r}")
        if not isinstance(self.image_marker, str) or not self.image_marker:
            raise ValueError("CheckpointTemplate.image_marker must be a non-empty string")
        object.__setattr__(self, "variables", dict(self.variables))
        object.__setattr__(self, "stop_tokens", tuple(self.stop_tokens))
        if not all(isinstance(t, str) and t for t in self.stop_tokens):
            raise ValueError(f"CheckpointTemplate.stop_tokens must be non-empty strings, got {self.stop_tokens!r}")

    # --- rendering -----------------------------------------------------------------------
    @property
    def has_generation_blocks(self) -> bool:
        """Whether the template marks answers with `{% generation %}` blocks."""
        return bool(_GENERATION_TAG.search(self.chat_template))

    def render_text(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                    ) -> tuple[str, list[tuple[int, int]]]:
        """(text, generation-block char spans) of Hugging Face `messages`, images not expanded."""
        template = _compiled(self.chat_template)
        rendered: list[str] = []
        spans: list[tuple[int, int]] = []
        token = _TRACKER.set((rendered, spans))
        try:
            for piece in template.generate(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                           **self.variables):
                rendered.append(piece)
        except Exception as err:  # a template may raise anything (raise_exception, TypeError, ...)
            raise TemplateError(f"the chat template ({self.source}) cannot render this conversation: "
                                f"{type(err).__name__}: {err}") from None
        finally:
            _TRACKER.reset(token)
        return "".join(rendered), spans

    def render(self, messages: Iterable[Message | Mapping[str, Any]], *, image_expansion: str,
               add_generation_prompt: bool = False, placeholder: str = IMAGE_PLACEHOLDER) -> RenderedChat:
        """The conversation (images as `placeholder`s in user texts) as the processor renders it, each
        image marker replaced by `image_expansion`, with where each message starts and which
        characters are answers (module docstring)."""
        hf = hf_messages(messages, self.content_style, self.image_marker, placeholder)
        full, blocks = self.render_text(hf)
        prefixes = [self._prefix(hf, k, full) for k in range(1, len(hf))]
        starts = [0, *prefixes, len(full)]
        if self.has_generation_blocks:
            answers = list(blocks)
        else:
            answers = []
            for k, message in enumerate(hf):
                if message["role"] == "assistant":
                    prompt, _ = self.render_text(hf[:k], add_generation_prompt=True)
                    if not full.startswith(prompt) or len(prompt) > starts[k + 1]:
                        raise TemplateError(
                            f"the chat template ({self.source}): its generation prompt {prompt[starts[k]:]!r} "
                            f"does not begin assistant message {k} as rendered "
                            f"({full[starts[k]:starts[k + 1]]!r}), so the answer cannot be located")
                    answers.append((len(prompt), starts[k + 1]))
        generation_start = None
        text = full
        if add_generation_prompt:
            text, _ = self.render_text(hf, add_generation_prompt=True)
            if not text.startswith(full):
                raise TemplateError(f"the chat template ({self.source}): the generation prompt changes the "
                                    "conversation before it")
            generation_start = len(full)
        expand = _Expansion(text, self.image_marker, image_expansion)
        return RenderedChat(
            text=expand.text,
            message_starts=tuple(expand.position(c) for c in starts),
            answer_spans=tuple((expand.position(a), expand.position(b)) for a, b in answers),
            generation_start=None if generation_start is None else expand.position(generation_start),
        )

    def _prefix(self, hf: list[dict], k: int, full: str) -> int:
        """Where message k begins: the length of the conversation rendered through message k - 1,
        which must begin the whole rendering."""
        try:
            head, _ = self.render_text(hf[:k])
        except TemplateError:
            head = None
        if head is None or not full.startswith(head):
            raise TemplateError(
                f"the chat template ({self.source}) renders the first {k} messages as text that does not "
                "begin the whole conversation, so its messages cannot be told apart")
        return len(head)

    # --- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"chat_template": self.chat_template, "source": self.source, "content_style": self.content_style,
                "image_marker": self.image_marker, "variables": dict(self.variables),
                "stop_tokens": list(self.stop_tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "checkpoint template") -> "CheckpointTemplate":
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(known - set(data) - {"variables", "stop_tokens"})
        if unknown or missing:
            raise ValueError(f"{source}: unknown keys {unknown}, missing keys {missing}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TEMPLATE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "CheckpointTemplate | None":
        """The template saved in `directory`, or None when it has none."""
        path = Path(directory) / TEMPLATE_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))

    def __repr__(self) -> str:
        return (f"CheckpointTemplate(source={self.source!r}, content_style={self.content_style!r}, "
                f"image_marker={self.image_marker!r}, {len(self.chat_template)} chars)")


class _Expansion:
    """`text` with every `marker` replaced by `replacement`, and the map of char offsets into it."""

    def __init__(self, text: str, marker: str, replacement: str):
        self.marker_starts = [m.start() for m in re.finditer(re.escape(marker), text)]
        self.grow = len(replacement) - len(marker)
        self.marker_length = len(marker)
        self.text = text.replace(marker, replacement)

    def position(self, offset: int) -> int:
        """Where char `offset` of the unexpanded text lands (an offset inside a marker is an error)."""
        before = 0
        for start in self.marker_starts:
            if start >= offset:
                break
            if offset < start + self.marker_length:
                raise TemplateError("a message boundary falls inside an image marker")
            before += 1
        return offset + before * self.grow


_COMPILED: dict[str, Any] = {}
# (pieces rendered so far, generation-block spans) of the render in progress.
_TRACKER: contextvars.ContextVar = contextvars.ContextVar("checkpoint_template_tracker", default=None)


def _compiled(source: str):
    """The template compiled in a sandboxed environment with transformers' chat-template settings."""
    if source not in _COMPILED:
        _COMPILED[source] = _environment().from_string(source)
    return _COMPILED[source]


def _environment():
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body and records its char span."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_record"), [], [], body).set_lineno(lineno)

        def _record(self, caller):
            text = caller()
            tracked = _TRACKER.get()
            if tracked is not None:  # the pieces yielded so far are the text before the block
                rendered, spans = tracked
                start = sum(len(piece) for piece in rendered)
                spans.append((start, start + len(text)))
            return text

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlocks, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env
