"""The one CXRTrek chat template, shared by training, decoding and export.

A conversation renders as

    {bos}{system_prefix}SYSTEM{end_of_turn}{user_prefix}QUESTION{end_of_turn}
    {assistant_prefix}ANSWER{end_of_turn}{user_prefix}...

(no separators: every content string sits between two control tokens, so
encoding it on its own gives exactly the ids it gets inside the whole string).
Image placeholders (`ChatFormat.image`, `<image>` by default) sit inside user
texts where an image is introduced; with `tokens_per_image = N` each one
becomes N copies, the LLaVA-style expansion the model expects.

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

from data_pipeline.records import IMAGE_PLACEHOLDER, Message

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


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """The token strings of the chat template.

    bos/eos/pad/image/end_of_turn must each be a single token of the
    tokenizer (checked when a tokenizer is built). The role prefixes are
    single tokens in the CXRTrek format; a foreign tokenizer may declare
    longer prefixes (e.g. "<|im_start|>user\\n"), which are encoded as text.
    """

    bos: str = "<|bos|>"
    eos: str = "<|eos|>"
    pad: str = "<|pad|>"
    image: str = IMAGE_PLACEHOLDER
    end_of_turn: str = "<|end|>"
    system_prefix: str = "<|system|>"
    user_prefix: str = "<|user|>"
    assistant_prefix: str = "<|assistant|>"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"ChatFormat.{field.name} must be a non-empty string, got {value!r}")
        singles = self.single_token_fields()
        if len(set(singles.values())) != len(singles):
            raise ValueError(f"ChatFormat bos/eos/pad/image/end_of_turn must be distinct: {singles}")

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

    def control_strings(self) -> tuple[str, ...]:
        """Every token string of the format (none may occur inside message content, bar `image`)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

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
        content = message.content.replace(fmt.image, fmt.image * tokens_per_image)
        parts += [fmt.prefix(message.role), content, fmt.end_of_turn]
    if add_generation_prompt:
        parts.append(fmt.assistant_prefix)
    return "".join(parts)


def _literal(text: str) -> str:
    """A Jinja expression printing `text` verbatim (JSON string escapes are Jinja escapes too)."""
    return "{{ " + json.dumps(text) + " }}"


def jinja_template(fmt: ChatFormat = ChatFormat()) -> str:
    """The Hugging Face `chat_template` equivalent of `render` for `fmt`.

    Optional template variable `tokens_per_image` (default 1) expands each
    image placeholder, as `render(..., tokens_per_image=N)` does.
    """
    image = json.dumps(fmt.image)
    role_branches = "".join(
        ("{%- if" if i == 0 else "{%- elif")
        + f" message['role'] == {json.dumps(role)} -%}}"
        + _literal(fmt.prefix(role))
        for i, role in enumerate(ROLES)
    )
    return (
        "{%- set n_image = tokens_per_image if tokens_per_image is defined else 1 -%}"
        + _literal(fmt.bos)
        + "{%- for message in messages -%}"
        + role_branches
        + "{%- else -%}{{ raise_exception('unknown chat role ' ~ message['role']) }}{%- endif -%}"
        + f"{{{{ message['content'] | replace({image}, {image} * n_image) }}}}"
        + _literal(fmt.end_of_turn)
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt -%}"
        + _literal(fmt.assistant_prefix)
        + "{%- endif -%}"
    )
