"""The rows a source reader refuses: raised at once, or (with `--skip-invalid`) dropped and listed.

Every reader reports a bad row as a `SourceError` (file:row, field, reason) through one
`InvalidRows` log: in the strict mode (the default) the error is raised; with `skip=True` the row
is dropped and recorded as a `SkippedRow`, so the caller can say how many rows were dropped and
why. Nothing is dropped without a record.
"""

from __future__ import annotations

import collections
import dataclasses

from data_pipeline.construct.source_study import SourceError

__all__ = ["SkippedRow", "InvalidRows"]


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """One dropped row: where it was read ("file:row"), the field at fault and why."""

    origin: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: field {self.field!r}: {self.reason}"


class InvalidRows:
    """Raises each `SourceError` (skip=False) or drops the row and keeps a `SkippedRow` (skip=True)."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self._rows: list[SkippedRow] = []

    def reject(self, error: SourceError) -> None:
        """The row of `error` is invalid: raise it, or record it as dropped when skipping."""
        if not self.skip:
            raise error
        self._rows.append(SkippedRow(error.origin, error.field, error.reason))

    def clear(self) -> None:
        """Forget the rows dropped so far (a reader starts each pass over its files with this)."""
        self._rows.clear()

    @property
    def rows(self) -> tuple[SkippedRow, ...]:
        """The dropped rows, in the order they were read."""
        return tuple(self._rows)

    def by_field(self) -> dict[str, int]:
        """field -> how many rows were dropped for it, most frequent first (ties by field name)."""
        counts = collections.Counter(row.field for row in self._rows)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str:
        """One line for the console: how many rows were dropped and for which fields."""
        if not self._rows:
            return "skipped: 0 invalid row(s)"
        fields = ", ".join(f"{count} for {field!r}" for field, count in self.by_field().items())
        return f"skipped: {len(self._rows)} invalid row(s) ({fields})"
