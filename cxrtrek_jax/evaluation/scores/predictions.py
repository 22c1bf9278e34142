"""The predictions file: one JSON object per line, one line per scored turn.

This is the contract between decoding (which writes the file) and scoring
(which reads it, possibly much later and on another machine):

    {"study_id": str, "turn_index": int, "stage": 1..8, "task_type": str,
     "qtype": str, "question": str, "reference": str, "prediction": str,
     "context": "own" | "teacher" | "none" | "swapped", "scores": {...},
     "num_generated_tokens": int | null, "latency_s": float | null,
     "stop_reason": str | null, "context_dropped": int | null}

`turn_index` is the position of the turn in the study's turn list.
`context` says which answers filled the earlier turns of the conversation:
the model's own ("own"), the references ("teacher") or none at all ("none");
"swapped" is "own" with every study's images replaced by another study's (the image-reliance
check: a model that reads its radiographs answers worse there).
`scores` holds the per-turn scores computed by the scorer (empty when
written by decoding). `context_dropped`: how many earlier turns were left out of
this turn's context so that the chain fit the decoder's cache (0: the whole chain;
see `decoding.chain`, long chains). The last four fields are optional.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from cxrtrek_jax.contexts import CONTEXT_MODES
from data_pipeline.schema.records import freeze, thaw
from data_pipeline.schema.stages import Stage, parse_qtype

__all__ = [
    "PredictionRecord",
    "PredictionFormatError",
    "read_predictions",
    "PredictionWriter",
    "write_predictions",
    "prediction_from_turn",
]


_REQUIRED = (
    "study_id",
    "turn_index",
    "stage",
    "task_type",
    "qtype",
    "question",
    "reference",
    "prediction",
    "context",
)
_OPTIONAL = ("scores", "num_generated_tokens", "latency_s", "stop_reason", "context_dropped")


class PredictionFormatError(ValueError):
    """A predictions line that does not follow the record contract."""


@dataclasses.dataclass(frozen=True)
class PredictionRecord:
    """One decoded turn and its reference.

    scores: per-turn scores (JSON-able values), filled in by the scorer.
    num_generated_tokens / latency_s (seconds) / stop_reason / context_dropped:
        decoding statistics, None when the decoder did not record them.
    """

    study_id: str
    turn_index: int
    stage: int
    task_type: str
    qtype: str
    question: str
    reference: str
    prediction: str
    context: str
    scores: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_generated_tokens: int | None = None
    latency_s: float | None = None
    stop_reason: str | None = None
    context_dropped: int | None = None

    def __post_init__(self) -> None:
        _validate(self)
        object.__setattr__(self, "scores", freeze(self.scores))

    def to_json(self) -> str:
        """One line of JSON (no trailing newline); keys in contract order."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _REQUIRED}
        out["scores"] = thaw(self.scores)
        for name in _OPTIONAL[1:]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, line: str) -> "PredictionRecord":
        """Parse one line; PredictionFormatError naming the problem otherwise."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise PredictionFormatError(f"not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "PredictionRecord":
        if not isinstance(data, dict):
            raise PredictionFormatError(f"a record must be a JSON object, got {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise PredictionFormatError(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise PredictionFormatError(f"unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "PredictionRecord":
        return dataclasses.replace(self, **changes)


def _check_type(record: PredictionRecord, name: str, types: tuple[type, ...], optional: bool = False) -> None:
    value = getattr(record, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise PredictionFormatError(f"field {name!r} must be {expected}, got {value!r}")


def _validate(record: PredictionRecord) -> None:
    for name in ("study_id", "task_type", "qtype", "question", "reference", "prediction", "context"):
        _check_type(record, name, (str,))
    _check_type(record, "turn_index", (int,))
    _check_type(record, "stage", (int,))
    _check_type(record, "num_generated_tokens", (int,), optional=True)
    _check_type(record, "latency_s", (int, float), optional=True)
    _check_type(record, "stop_reason", (str,), optional=True)
    _check_type(record, "context_dropped", (int,), optional=True)
    if not record.study_id:
        raise PredictionFormatError("field 'study_id' is empty")
    if record.turn_index < 0:
        raise PredictionFormatError(f"field 'turn_index' must be >= 0, got {record.turn_index}")
    try:
        Stage.parse(record.stage)
        parse_qtype(record.qtype)
    except ValueError as err:
        raise PredictionFormatError(str(err)) from None
    if record.context not in CONTEXT_MODES:
        raise PredictionFormatError(
            f"field 'context' must be one of {', '.join(CONTEXT_MODES)}, got {record.context!r}"
        )
    if not isinstance(record.scores, Mapping):
        raise PredictionFormatError(f"field 'scores' must be an object, got {record.scores!r}")
    if record.latency_s is not None and not math.isfinite(record.latency_s):
        raise PredictionFormatError(f"field 'latency_s' must be finite, got {record.latency_s!r}")


def read_predictions(path: str | Path) -> Iterator[PredictionRecord]:
    """Stream the records of a predictions file (blank lines are skipped).

    Raises PredictionFormatError naming the file and line of a bad record.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield PredictionRecord.from_json(line)
            except PredictionFormatError as err:
                raise PredictionFormatError(f"{path}:{line_number}: {err}") from None


class PredictionWriter:
    """Append records to a predictions file, one line each; use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: IO[str] | None = None
        self.count = 0

    def __enter__(self) -> "PredictionWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        return self

    def write(self, record: PredictionRecord) -> None:
        if self._file is None:
            raise RuntimeError("PredictionWriter.write called outside its `with` block")
        self._file.write(record.to_json() + "\n")
        self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_predictions(path: str | Path, records: Iterator[PredictionRecord] | list[PredictionRecord]) -> int:
    """Write all `records` to `path`; returns how many were written."""
    with PredictionWriter(path) as writer:
        for record in records:
            writer.write(record)
        return writer.count


def prediction_from_turn(turn: Any) -> PredictionRecord:
    """The predictions-file record of one decoded turn (a `cxrtrek_jax.decoding.TurnResult`;
    reference "" when the turn had none)."""
    return PredictionRecord(
        study_id=turn.study_id, turn_index=turn.turn_index, stage=turn.stage, task_type=turn.task_type,
        qtype=turn.qtype, question=turn.question, reference=turn.reference or "", prediction=turn.answer,
        context=turn.context, num_generated_tokens=turn.num_generated_tokens, latency_s=turn.latency_s,
        stop_reason=turn.stop_reason, context_dropped=turn.context_dropped,
    )
