"""Typed, immutable records for CXRTrek studies.

One `Study` is one element of the released JSON list: a patient's study with
its images (current-study views first, then prior-study views) and its ordered
question-answer turns (`QAItem`), each tagged with a diagnostic stage. Fields
the schema does not name are kept verbatim in `extras` mappings so that a
read-write round trip loses nothing.

Records are deeply frozen: dicts become `FrozenMapping`, lists become tuples.
`thaw` turns such a value back into plain JSON-able dicts and lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from data_pipeline.schema.stages import QType, Stage, parse_qtype

__all__ = ["FrozenMapping", "freeze", "thaw", "Message", "QAItem", "Study", "IMAGE_PLACEHOLDER", "study_key"]

# The placeholder that introduces an image inside a question text.
IMAGE_PLACEHOLDER = "<image>"


class FrozenMapping(Mapping):
    """A read-only, hashable-by-identity, picklable mapping (insertion order kept)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenMapping is read-only")

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __reduce__(self):
        return (FrozenMapping, (self._data,))


def freeze(value: Any) -> Any:
    """Deep-freeze a JSON-like value: dict -> FrozenMapping, list -> tuple."""
    if isinstance(value, Mapping):
        return FrozenMapping({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Inverse of `freeze`: FrozenMapping/Mapping -> dict, tuple -> list."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def study_key(source: str, pat_id: str, study_id: str) -> str:
    """The identity of a study: "source/pat_id/study_id", empty parts left out.

    `study_id` alone is not an identity: CheXpert-derived studies are numbered per patient
    (`study1`, `study2`, ... under every `pat_id`). Everything keyed by study (validation,
    splits, predictions, baselines, case reports) uses this key.
    """
    return "/".join(part for part in (source, pat_id, study_id) if part)


def _frozen_field() -> Any:
    return dataclasses.field(default_factory=FrozenMapping)


@dataclasses.dataclass(frozen=True)
class Message:
    """One chat message of the released `messages` list."""

    role: str  # "system" | "user" | "assistant"
    content: str
    extras: Mapping[str, Any] = _frozen_field()


@dataclasses.dataclass(frozen=True)
class QAItem:
    """One question-answer turn.

    stage: diagnostic stage 1..8 (kept as the raw int; see `stage_enum`).
    task_type: as found in the data (e.g. "Findings_Identification").
    qtype: question type string (e.g. "yes_no", "multi-choice-4").
    image_input_count: cumulative number of images visible at this turn.
    question: may contain `<image>` placeholders where images are introduced.
    answer: reference answer text (detection answers carry `<|box|>` markup).
    extras: every other per-item field, kept verbatim.
    """

    stage: int
    task_type: str
    qtype: str
    image_input_count: int
    question: str
    answer: str
    extras: Mapping[str, Any] = _frozen_field()

    @property
    def stage_enum(self) -> Stage:
        return Stage.parse(self.stage)

    @property
    def qtype_parsed(self) -> QType:
        return parse_qtype(self.qtype)

    @property
    def num_placeholders(self) -> int:
        return self.question.count(IMAGE_PLACEHOLDER)


@dataclasses.dataclass(frozen=True)
class Study:
    """One CXRTrek study (one element of the released JSON list).

    images: image paths relative to an image root (`cxrtrek_data.image`),
        current-study views first, then prior-study views.
    abs_images: the top-level absolute `image` list as released (same order),
        or None for the content-only form.
    items: the turns in their given order (stages may interleave; never re-sorted).
    messages: the released chat `messages`, or None for the content-only form.
    extras / data_dict_extras / cxrtrek_extras: unknown keys of the element, of
        `data_dict` and of `data_dict.cxrtrek_data`, kept verbatim.
    """

    study_id: str
    pat_id: str = ""
    source: str = ""
    ref_study_id: str = ""
    pos_study_id: str = ""
    images: tuple[str, ...] = ()
    abs_images: tuple[str, ...] | None = None
    items: tuple[QAItem, ...] = ()
    messages: tuple[Message, ...] | None = None
    extras: Mapping[str, Any] = _frozen_field()
    data_dict_extras: Mapping[str, Any] = _frozen_field()
    cxrtrek_extras: Mapping[str, Any] = _frozen_field()

    @property
    def key(self) -> str:
        """The study's identity, `study_key(source, pat_id, study_id)`."""
        return study_key(self.source, self.pat_id, self.study_id)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def has_prior(self) -> bool:
        return bool(self.ref_study_id)

    @property
    def has_later(self) -> bool:
        return bool(self.pos_study_id)

    def stages(self) -> tuple[int, ...]:
        """Distinct stage numbers present, ascending."""
        return tuple(sorted({item.stage for item in self.items}))

    def items_of_stage(self, stage: int) -> tuple[QAItem, ...]:
        return tuple(item for item in self.items if item.stage == int(stage))

    def replace(self, **changes: Any) -> "Study":
        return dataclasses.replace(self, **changes)
