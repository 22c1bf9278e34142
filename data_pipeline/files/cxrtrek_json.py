"""Reading and writing the released CXRTrek JSON format.

The released file is one JSON list; each element is one study::

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "image": [absolute paths: current-study views first, then prior-study views],
     "data_dict": {"cxrtrek_data": {
         "source", "pat_id", "study_id", "ref_study_id", "pos_study_id",
         "image": [paths relative to an image root, same order],
         "content": [{"stage", "task_type", "qtype", "image_input_count",
                      "question", "answer", ...extra item fields}]}}}

Two content-only forms are read too: an element that is just
``{"data_dict": {"cxrtrek_data": {...}}}``, and the bare ``cxrtrek_data`` dict.

Reading checks the structure (JSON types, required keys) and lists every
structural issue of an element at once; what the values mean (stage range,
placeholder counts, boxes, ...) is checked by `data_pipeline.files.validation`.
Unknown keys at every level go to the `extras` mappings of the records, and
writing puts them back after the known keys, so a round trip keeps every
field and, for data in the released key order, the key order too. Two
normalisations: integer ids are read as strings, and missing or null
`pat_id`/`source`/`ref_study_id`/`pos_study_id` are read as "" (and written
back as "").

The reader streams: `iter_elements` decodes one list element at a time, so a
file of hundreds of thousands of studies is never held in memory as a whole.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TextIO

from data_pipeline.files.atomic_write import open_atomically
from data_pipeline.schema.records import FrozenMapping, Message, QAItem, Study, freeze, study_key, thaw

__all__ = [
    "CXRTrekFormatError",
    "FormatIssue",
    "DEFAULT_SYSTEM_PROMPT",
    "CXRTREK_DATA_PATH",
    "find_cxrtrek_data",
    "record_key",
    "describe_sample",
    "iter_elements",
    "parse_element",
    "parse_study",
    "iter_studies",
    "read_studies",
    "study_to_element",
    "write_studies",
    "element_text",
    "write_element_texts",
    "derive_messages",
    "derive_abs_images",
    "add_released_fields",
]

# The system prompt of the released data.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful radiology assistant to help radiologists analyze, interpret medical "
    "images and answer clinical questions."
)

# Where the study record sits inside a released element.
CXRTREK_DATA_PATH = "data_dict.cxrtrek_data"

_ELEMENT_KEYS = ("messages", "image", "data_dict")
_DATA_DICT_KEYS = ("cxrtrek_data",)
_ID_KEYS = ("source", "pat_id", "study_id", "ref_study_id", "pos_study_id")
_CXRTREK_KEYS = _ID_KEYS + ("image", "content")
_ITEM_KEYS = ("stage", "task_type", "qtype", "image_input_count", "question", "answer")
_ITEM_STR_KEYS = ("task_type", "qtype", "question", "answer")
_ITEM_INT_KEYS = ("stage", "image_input_count")
_MESSAGE_KEYS = ("role", "content")

ElementForm = Literal["auto", "released", "content", "cxrtrek_data"]


class CXRTrekFormatError(ValueError):
    """A file or sample that does not have the CXRTrek structure; the message names
    the file, the sample index, the study id and the field where known."""


@dataclasses.dataclass(frozen=True)
class FormatIssue:
    """One structural problem of an element.

    field: dotted JSON path inside the element (e.g.
        "data_dict.cxrtrek_data.content[3].stage"); "" for the element itself.
    """

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field or 'sample'}: {self.message}"


# ----------------------------------------------------------------------------- streaming reader

_CHUNK_CHARS = 1 << 20
_NON_WHITESPACE = re.compile(r"[^ \t\n\r]")
# A decode error this close to the end of the buffer may just be a cut-off value.
_TRUNCATION_MARGIN = 64


def _open_text(path: str | os.PathLike) -> TextIO:
    name = os.fspath(path)
    if name.endswith(".gz"):
        return gzip.open(name, "rt", encoding="utf-8")
    return open(name, encoding="utf-8")


class _ListStream:
    """Decodes the elements of a top-level JSON list one at a time from a text file."""

    def __init__(self, file: TextIO, name: str):
        self._file = file
        self._name = name
        self._decoder = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._line_of_buf_start = 1
        self._count = 0

    def _fill(self) -> bool:
        """Drops the consumed text and appends one chunk; False at the end of the file."""
        if self._eof:
            return False
        try:
            chunk = self._file.read(_CHUNK_CHARS)
        except UnicodeDecodeError as e:
            raise CXRTrekFormatError(f"{self._name}: not UTF-8 text: {e}") from None
        except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz file.
            raise CXRTrekFormatError(f"{self._name}: cannot read: {e}") from None
        if not chunk:
            self._eof = True
            return False
        self._line_of_buf_start += self._buf.count("\n", 0, self._pos)
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _peek(self) -> str | None:
        """The next non-whitespace character (not consumed), None at the end of the file."""
        while True:
            match = _NON_WHITESPACE.search(self._buf, self._pos)
            if match:
                self._pos = match.start()
                return self._buf[self._pos]
            self._pos = len(self._buf)
            if not self._fill():
                return None

    def _error(self, message: str, pos: int | None = None) -> CXRTrekFormatError:
        pos = self._pos if pos is None else pos
        line = self._line_of_buf_start + self._buf.count("\n", 0, pos)
        return CXRTrekFormatError(f"{self._name}: line {line}: {message}")

    def _decode_value(self) -> Any:
        if self._peek() is None:
            raise self._error(f"unexpected end of file where sample {self._count} should start")
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                cut_off = err.msg.startswith("Unterminated string") or (
                    err.pos >= len(self._buf) - _TRUNCATION_MARGIN
                )
                if cut_off and self._fill():
                    continue
                if err.msg.startswith("Unterminated string") or err.pos >= len(self._buf):
                    raise self._error(f"file ends inside sample {self._count} ({err.msg})", err.pos) from None
                raise self._error(
                    f"not valid JSON in sample {self._count}: {err.msg}", err.pos
                ) from None
            if end == len(self._buf) and self._fill():
                continue  # a number at the end of the buffer may go on in the next chunk.
            self._pos = end
            return value

    def _expect_end(self) -> None:
        if self._peek() is not None:
            raise self._error("unexpected data after the closing ']' of the list")

    def __iter__(self) -> Iterator[Any]:
        first = self._peek()
        if first is None:
            raise self._error("empty file; expected a JSON list of studies")
        if first != "[":
            if first == "{":
                raise self._error("is a JSON object, not a JSON list of studies")
            if first in '"-0123456789tfnNI':
                raise self._error("is a JSON scalar, not a JSON list of studies")
            raise self._error(f"is not JSON (starts with {first!r})")
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
            self._expect_end()
            return
        while True:
            yield self._decode_value()
            self._count += 1
            separator = self._peek()
            if separator == ",":
                self._pos += 1
            elif separator == "]":
                self._pos += 1
                self._expect_end()
                return
            elif separator is None:
                raise self._error(f"unexpected end of file after sample {self._count - 1}: the list is never closed")
            else:
                raise self._error(f"expected ',' or ']' after sample {self._count - 1}, found {separator!r}")


def iter_elements(path: str | os.PathLike) -> Iterator[Any]:
    """The raw elements of a CXRTrek JSON list file (`.gz` allowed), streamed.

    Raises CXRTrekFormatError (naming the file and line) when the file is not
    a JSON list; OSError when it cannot be opened.
    """
    with _open_text(path) as file:
        yield from _ListStream(file, os.fspath(path))


# ----------------------------------------------------------------------------- structure


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def find_cxrtrek_data(element: Any) -> tuple[str, Mapping[str, Any] | None]:
    """(prefix, cxrtrek_data) of an element in any of the three forms.

    prefix is the dotted path of the study record inside the element plus a
    trailing dot ("data_dict.cxrtrek_data." or "" for the bare form);
    cxrtrek_data is None when the element has no usable study record.
    """
    if not isinstance(element, Mapping):
        return "", None
    if "data_dict" not in element:
        return ("", None) if "messages" in element else ("", element)
    data_dict = element["data_dict"]
    if not isinstance(data_dict, Mapping):
        return "data_dict.", None
    record = data_dict.get("cxrtrek_data")
    return CXRTREK_DATA_PATH + ".", record if isinstance(record, Mapping) else None


class _Issues:
    """Collects FormatIssues under a path prefix."""

    def __init__(self) -> None:
        self.items: list[FormatIssue] = []

    def add(self, field: str, message: str) -> None:
        self.items.append(FormatIssue(field, message))

    def string_list(self, value: Any, field: str) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.add(field, f"must be a list of strings, got {_type_name(value)}")
            return None
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        for i in bad:
            self.add(f"{field}[{i}]", f"must be a string, got {_type_name(value[i])}")
        return None if bad else tuple(value)


def _extras(mapping: Mapping[str, Any], known: Sequence[str]) -> FrozenMapping:
    return FrozenMapping({k: freeze(v) for k, v in mapping.items() if k not in known})


def _parse_id(record: Mapping[str, Any], key: str, prefix: str, issues: _Issues) -> str:
    value = record.get(key)
    if key == "study_id" and value is None:
        issues.add(prefix + key, "missing" if key not in record else "must be a string, got null")
        return ""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_int(value):
        return str(value)
    issues.add(prefix + key, f"must be a string, got {_type_name(value)}")
    return ""


def _parse_item(raw: Any, field: str, issues: _Issues) -> QAItem | None:
    if not isinstance(raw, Mapping):
        issues.add(field, f"must be an object, got {_type_name(raw)}")
        return None
    before = len(issues.items)
    for key in _ITEM_KEYS:
        if key not in raw:
            issues.add(f"{field}.{key}", "missing")
    for key in _ITEM_STR_KEYS:
        if key in raw and not isinstance(raw[key], str):
            issues.add(f"{field}.{key}", f"must be a string, got {_type_name(raw[key])} {raw[key]!r}")
    for key in _ITEM_INT_KEYS:
        if key in raw and not _is_int(raw[key]):
            issues.add(f"{field}.{key}", f"must be an integer, got {_type_name(raw[key])} {raw[key]!r}")
    if len(issues.items) > before:
        return None
    return QAItem(**{k: raw[k] for k in _ITEM_KEYS}, extras=_extras(raw, _ITEM_KEYS))


def _parse_messages(raw: Any, issues: _Issues) -> tuple[Message, ...] | None:
    if not isinstance(raw, list):
        issues.add("messages", f"must be a list, got {_type_name(raw)}")
        return None
    messages, ok = [], True
    for i, message in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(message, Mapping):
            issues.add(field, f"must be an object, got {_type_name(message)}")
            ok = False
            continue
        for key in _MESSAGE_KEYS:
            if not isinstance(message.get(key), str):
                got = "missing" if key not in message else f"must be a string, got {_type_name(message[key])}"
                issues.add(f"{field}.{key}", got)
                ok = False
        if ok:
            messages.append(
                Message(message["role"], message["content"], extras=_extras(message, _MESSAGE_KEYS))
            )
    return tuple(messages) if ok else None


def parse_element(element: Any) -> tuple[Study | None, tuple[FormatIssue, ...]]:
    """A raw element -> (Study, ()) or (None, every structural issue found)."""
    issues = _Issues()
    if not isinstance(element, Mapping):
        issues.add("", f"must be a JSON object, got {_type_name(element)}")
        return None, tuple(issues.items)
    prefix, record = find_cxrtrek_data(element)
    if record is None:
        if "data_dict" not in element:
            issues.add("data_dict", "missing (an element with 'messages' must carry data_dict.cxrtrek_data)")
        elif not isinstance(element["data_dict"], Mapping):
            issues.add("data_dict", f"must be an object, got {_type_name(element['data_dict'])}")
        else:
            value = element["data_dict"].get("cxrtrek_data")
            issues.add(CXRTREK_DATA_PATH, "missing" if value is None else f"must be an object, got {_type_name(value)}")
    wrapped = "data_dict" in element
    messages = _parse_messages(element["messages"], issues) if wrapped and "messages" in element else None
    abs_images = issues.string_list(element["image"], "image") if wrapped and "image" in element else None
    if record is None:
        return None, tuple(issues.items)

    ids = {key: _parse_id(record, key, prefix, issues) for key in _ID_KEYS}
    images: tuple[str, ...] | None = ()
    if "image" in record:
        images = issues.string_list(record["image"], prefix + "image")
    items: list[QAItem | None] = []
    content = record.get("content")
    if not isinstance(content, list):
        issues.add(prefix + "content", "missing" if content is None else f"must be a list, got {_type_name(content)}")
    else:
        items = [_parse_item(raw, f"{prefix}content[{i}]", issues) for i, raw in enumerate(content)]
    if issues.items:
        return None, tuple(issues.items)
    study = Study(
        **ids,
        images=images,
        abs_images=abs_images,
        items=tuple(items),
        messages=messages,
        extras=_extras(element, _ELEMENT_KEYS) if wrapped else FrozenMapping(),
        data_dict_extras=_extras(element["data_dict"], _DATA_DICT_KEYS) if wrapped else FrozenMapping(),
        cxrtrek_extras=_extras(record, _CXRTREK_KEYS),
    )
    return study, ()


def record_key(record: Mapping[str, Any] | None) -> str | None:
    """The study key ("source/pat_id/study_id", `records.study_key`) of a raw `cxrtrek_data`
    record, None without a usable study id."""
    if record is None:
        return None
    parts = [record.get(key) for key in ("source", "pat_id", "study_id")]
    parts = [str(p) if isinstance(p, (str, int)) and not isinstance(p, bool) else "" for p in parts]
    return study_key(*parts) if parts[2] else None


def describe_sample(path: str | os.PathLike | None, index: int | None, element: Any) -> str:
    """'file: sample 3 (study 'chexpert/patient1/study1')' — the location prefix of error messages."""
    parts = [os.fspath(path)] if path is not None else []
    where = f"sample {index}" if index is not None else "sample"
    key = record_key(find_cxrtrek_data(element)[1])
    parts.append(where + (f" (study {key!r})" if key is not None else ""))
    return ": ".join(parts)


def parse_study(element: Any, *, index: int | None = None, path: str | os.PathLike | None = None) -> Study:
    """A raw element -> Study; CXRTrekFormatError listing every structural issue.

    index/path only label the error message.
    """
    study, issues = parse_element(element)
    if study is None:
        listed = "; ".join(str(issue) for issue in issues)
        raise CXRTrekFormatError(f"{describe_sample(path, index, element)}: {listed}")
    return study


def iter_studies(path: str | os.PathLike) -> Iterator[Study]:
    """The studies of a CXRTrek JSON file in file order, streamed."""
    for index, element in enumerate(iter_elements(path)):
        yield parse_study(element, index=index, path=path)


def read_studies(path: str | os.PathLike) -> list[Study]:
    """All studies of a CXRTrek JSON file (any of the three forms), in file order."""
    return list(iter_studies(path))


# ----------------------------------------------------------------------------- writing


def _item_to_json(item: QAItem) -> dict[str, Any]:
    out = {key: getattr(item, key) for key in _ITEM_KEYS}
    out.update(thaw(item.extras))
    return out


def _message_to_json(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": message.content, **thaw(message.extras)}


def _cxrtrek_data_to_json(study: Study) -> dict[str, Any]:
    out: dict[str, Any] = {key: getattr(study, key) for key in _ID_KEYS}
    out["image"] = list(study.images)
    out["content"] = [_item_to_json(item) for item in study.items]
    out.update(thaw(study.cxrtrek_extras))
    return out


def study_to_element(study: Study, form: ElementForm = "auto") -> dict[str, Any]:
    """A Study -> one JSON element.

    form:
      "released": messages + image + data_dict (needs `messages` and
          `abs_images`; see `add_released_fields`);
      "content": {"data_dict": {"cxrtrek_data": ...}} plus element extras;
      "cxrtrek_data": the bare study record (needs empty element and
          data_dict extras, which that form cannot hold);
      "auto": whatever the study carries — messages and/or image when not None.
    """
    if form == "released" and (study.messages is None or study.abs_images is None):
        missing = [name for name in ("messages", "abs_images") if getattr(study, name) is None]
        raise ValueError(
            f"study {study.key!r}: the released form needs {' and '.join(missing)}; "
            "derive them with add_released_fields(study, image_root)"
        )
    record = _cxrtrek_data_to_json(study)
    if form == "cxrtrek_data":
        unfit = [name for name in ("extras", "data_dict_extras") if getattr(study, name)]
        unfit += [name for name in ("messages", "abs_images") if getattr(study, name) is not None]
        if unfit:
            raise ValueError(
                f"study {study.key!r}: the bare cxrtrek_data form cannot hold {', '.join(unfit)}"
            )
        return record
    if form not in ("auto", "released", "content"):
        raise ValueError(f"unknown form {form!r}; expected auto, released, content or cxrtrek_data")
    out: dict[str, Any] = {}
    if form != "content" and study.messages is not None:
        out["messages"] = [_message_to_json(m) for m in study.messages]
    if form != "content" and study.abs_images is not None:
        out["image"] = list(study.abs_images)
    out["data_dict"] = {"cxrtrek_data": record, **thaw(study.data_dict_extras)}
    out.update(thaw(study.extras))
    return out


def element_text(study: Study, form: ElementForm = "auto", indent: int | None = None) -> str:
    """One study as the JSON text of its list element (`write_element_texts` lays these out)."""
    text = json.dumps(study_to_element(study, form), indent=indent)
    return text if indent is None else text.replace("\n", "\n" + " " * indent)


def write_element_texts(path: str | os.PathLike, texts: Iterable[str], *, indent: int | None = None) -> int:
    """Writes element texts (`element_text`, same `indent`) as one JSON list (streamed,
    atomically); returns the count."""
    count = 0
    with open_atomically(path, "w", encoding="utf-8") as f:
        f.write("[")
        for text in texts:
            f.write(("," if count else "") + "\n" + ("" if indent is None else " " * indent) + text)
            count += 1
        f.write("\n]\n")
    return count


def write_studies(
    path: str | os.PathLike,
    studies: Iterable[Study],
    *,
    form: ElementForm = "auto",
    indent: int | None = None,
) -> int:
    """Writes studies as one JSON list (streamed, atomically); returns the count.

    indent: None puts each study on one line; an int pretty-prints (the
    released file uses 4).
    """
    return write_element_texts(path, (element_text(study, form, indent) for study in studies), indent=indent)


# ----------------------------------------------------------------------------- deriving the released fields


def derive_messages(
    items: Sequence[QAItem], system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
) -> tuple[Message, ...]:
    """The released chat: the system prompt (if not None), then per turn, in the
    given order, the user question and the assistant answer."""
    messages = [Message("system", system_prompt)] if system_prompt is not None else []
    for item in items:
        messages.append(Message("user", item.question))
        messages.append(Message("assistant", item.answer))
    return tuple(messages)


def derive_abs_images(images: Sequence[str], image_root: str | os.PathLike) -> tuple[str, ...]:
    """Absolute image paths: each relative path joined onto the absolute image root."""
    root = os.path.abspath(os.fspath(image_root))
    return tuple(os.path.join(root, path) for path in images)


def add_released_fields(
    study: Study, image_root: str | os.PathLike, *, system_prompt: str = DEFAULT_SYSTEM_PROMPT
) -> Study:
    """The study with `messages` and `abs_images` derived where they are None, so
    that it can be written in the released form."""
    changes: dict[str, Any] = {}
    if study.messages is None:
        changes["messages"] = derive_messages(study.items, system_prompt)
    if study.abs_images is None:
        changes["abs_images"] = derive_abs_images(study.images, image_root)
    return study.replace(**changes) if changes else study
