"""The one CXRTrek chat template, shared by training, decoding and export.

A conversation renders as

    {bos}{system_prefix}SYSTEM{system_end}{user_prefix}QUESTION{user_end}
    {assistant_prefix}ANSWER{end_of_turn}{user_prefix}...

where `system_end` / `user_end` are the end-of-turn token unless the format
sets other text (a foreign template such as llava-1.5's "USER: ... ASSISTANT:
...</s>" closes user turns with a space); an assistant turn always ends with
`end_of_turn`, the token decoding stops at, which may be the end-of-sequence
token itself. In the CXRTrek format every content string sits between two
control tokens, so encoding it on its own gives exactly the ids it gets inside
the whole string. Image placeholders (`ChatFormat.image`, `<image>` by
default) sit inside user texts where an image is introduced; with
`tokens_per_image = N` each one becomes `image_open` + N copies +
`image_close` (both empty by default: the LLaVA-style expansion; Gemma 3 wraps
the run in "\n\n<start_of_image>" ... "<end_of_image>\n\n").

The same template exists twice: `render` here (Python) and `jinja_template`,
the string stored as `chat_template` in tokenizer_config.json so Hugging Face's
`apply_chat_template` gives the same text (and token ids; tested).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Message

__all__ = [
    "CHAT_FORMAT_FILE",
    "ROLES",
    "ChatFormat",
    "as_messages",
    "jinja_template",
    "render",
]

CHAT_FORMAT_FILE = "cxrtrek_chat_format.json"
ROLES = ("system", "user", "assistant")
_SINGLE_TOKEN_FIELDS = ("bos", "eos", "pad", "image", "end_of_turn")
_END_FIELDS = ("system_end", "user_end")


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """The token strings of the chat template.

    bos/eos/pad/image/end_of_turn must each be a single token of the
    tokenizer (checked when a tokenizer is built); they are distinct, except
    that end_of_turn may be eos (llava-1.5 / Vicuna close an answer with
    "</s>"). The role prefixes are single tokens in the CXRTrek format; a
    foreign tokenizer may declare longer prefixes (e.g. "<|im_start|>user\\n")
    or none (""), which are encoded as text. `system_end` / `user_end`: the
    text closing a system / user message, None = the end_of_turn token.
    `image_open` / `image_close`: text around each expanded image.
    """

    bos: str = "<|bos|>"
    eos: str = "<|eos|>"
    pad: str = "<|pad|>"
    image: str = IMAGE_PLACEHOLDER
    end_of_turn: str = "<|end|>"
    system_prefix: str = "<|system|>"
    user_prefix: str = "<|user|>"
    assistant_prefix: str = "<|assistant|>"
    system_end: str | None = None
    user_end: str | None = None
    image_open: str = ""
    image_close: str = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _SINGLE_TOKEN_FIELDS:
                ok = isinstance(value, str) and bool(value)
                what = "a non-empty string"
            else:
                ok = isinstance(value, str) or (value is None and field.name in _END_FIELDS)
                what = "a string" + (" or None" if field.name in _END_FIELDS else "")
            if not ok:
                raise ValueError(f"ChatFormat.{field.name} must be {what}, got {value!r}")
        singles = self.single_token_fields()
        distinct = {name: text for name, text in singles.items() if name != "end_of_turn"}
        others = {name: text for name, text in distinct.items() if name != "eos"}
        if len(set(distinct.values())) != len(distinct) or self.end_of_turn in others.values():
            raise ValueError(f"ChatFormat bos/eos/pad/image/end_of_turn must be distinct (end_of_turn may "
                             f"equal eos): {singles}")

    def single_token_fields(self) -> dict[str, str]:
        """The fields that must each be exactly one token id."""
        return {
            "bos": self.bos,
            "eos": self.eos,
            "pad": self.pad,
            "image": self.image,
            "end_of_turn": self.end_of_turn,
        }

    def prefix(self, role: str) -> str:
        """The role marker that opens a message of `role`."""
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
        return getattr(self, f"{role}_prefix")

    def turn_end(self, role: str) -> str:
        """The text closing a message of `role` (the end-of-turn token unless the format says otherwise)."""
        self.prefix(role)
        end = getattr(self, f"{role}_end", None)
        return self.end_of_turn if end is None else end

    def control_strings(self) -> tuple[str, ...]:
        """Every control string of the format that may not occur inside message content (bar `image`
        in user messages): the token strings, and the prefixes, ends and image wrappers that hold
        more than white space."""
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(dict.fromkeys(v for v in values if isinstance(v, str) and v.strip()))

    def expand_image(self, tokens_per_image: int) -> str:
        """What one image placeholder becomes in rendered text."""
        return self.image_open + self.image * tokens_per_image + self.image_close

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "chat format") -> "ChatFormat":
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown chat format keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def save(self, directory: str | Path) -> Path:
        """Write `cxrtrek_chat_format.json` into `directory`; returns its path."""
        path = Path(directory) / CHAT_FORMAT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ChatFormat":
        """Read `cxrtrek_chat_format.json` from `directory`."""
        path = Path(directory) / CHAT_FORMAT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no chat format file") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


def as_messages(messages: Iterable[Message | Mapping[str, Any]], fmt: ChatFormat) -> tuple[Message, ...]:
    """Messages as `Message` records, checked against the format.

    Accepts `Message` records or HF-style {"role", "content"} dicts. Raises
    ValueError naming the message index for an unknown role, non-string
    content, a control token inside content, or an image placeholder outside
    a user message.
    """
    out = []
    for index, message in enumerate(messages):
        if isinstance(message, Mapping):
            if "role" not in message or "content" not in message:
                raise ValueError(f"message {index}: needs 'role' and 'content' keys, got {sorted(message)}")
            message = Message(role=message["role"], content=message["content"])
        if message.role not in ROLES:
            raise ValueError(f"message {index}: unknown role {message.role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message.content, str):
            raise ValueError(f"message {index}: content must be a string, got {type(message.content).__name__}")
        for token in fmt.control_strings():
            if token == fmt.image and message.role == "user":
                continue
            if token in message.content:
                raise ValueError(f"message {index} ({message.role}): content contains the control token {token!r}")
        out.append(message)
    return tuple(out)


def render(
    messages: Iterable[Message | Mapping[str, Any]],
    fmt: ChatFormat = ChatFormat(),
    *,
    tokens_per_image: int = 1,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as one string (what `jinja_template` renders for the same messages)."""
    if tokens_per_image < 1:
        raise ValueError(f"tokens_per_image must be >= 1, got {tokens_per_image}")
    parts = [fmt.bos]
    for message in as_messages(messages, fmt):
        content = message.content.replace(fmt.image, fmt.expand_image(tokens_per_image))
        parts += [fmt.prefix(message.role), content, fmt.turn_end(message.role)]
    if add_generation_prompt:
        parts.append(fmt.assistant_prefix)
    return "".join(parts)


def _literal(text: str) -> str:
    """A Jinja expression printing `text` verbatim (JSON string escapes are Jinja escapes too)."""
    return "{{ " + json.dumps(text) + " }}"


def jinja_template(fmt: ChatFormat = ChatFormat(), *, image_text: str | None = None) -> str:
    """The Hugging Face `chat_template` equivalent of `render` for `fmt`.

    Optional template variable `tokens_per_image` (default 1) expands each
    image placeholder, as `render(..., tokens_per_image=N)` does.
    `image_text`: what each placeholder renders as when `tokens_per_image` is
    not given (e.g. Gemma 3's "<start_of_image>", which `Gemma3Processor`
    expands to the whole image); None: the expansion with one token.
    """
    image = json.dumps(fmt.image)
    expanded = f"{json.dumps(fmt.image_open)} ~ {image} * n_image ~ {json.dumps(fmt.image_close)}"
    content = f"{{{{ message['content'] | replace({image}, {expanded}) }}}}"
    if image_text is not None:
        content = ("{%- if tokens_per_image is defined -%}" + content + "{%- else -%}"
                   + f"{{{{ message['content'] | replace({image}, {json.dumps(image_text)}) }}}}" + "{%- endif -%}")
    role_branches = "".join(
        ("{%- if" if i == 0 else "{%- elif")
        + f" message['role'] == {json.dumps(role)} -%}}"
        + _literal(fmt.prefix(role)) + content + _literal(fmt.turn_end(role))
        for i, role in enumerate(ROLES)
    )
    return (
        "{%- set n_image = tokens_per_image if tokens_per_image is defined else 1 -%}"
        + _literal(fmt.bos)
        + "{%- for message in messages -%}"
        + role_branches
        + "{%- else -%}{{ raise_exception('unknown chat role ' ~ message['role']) }}{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}"
        + _literal(fmt.assistant_prefix)
        + "{%- endif -%}"
    )
