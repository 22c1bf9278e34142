"""CSV rows with the byte offset each starts at, so one row can be read again without the rest.

The report tables (MIMIC-CXR metadata and split, CheXpert Plus) are CSV, plain or gzip-compressed
(`.csv.gz`, as PhysioNet ships MIMIC-CXR-JPG's tables), UTF-8 with an optional byte-order mark.
Fields may hold newlines (CheXpert Plus reports do). A row's number counts the header as row 1
and every record after it, as a spreadsheet shows them; `read_csv_row` reads one row back from
its offset (in a gzip file that re-reads the file up to there: fine for plain files, slow for
large compressed ones).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
from collections.abc import Iterator, Sequence
from typing import IO

from data_pipeline.construct.source_study import SourceError

__all__ = ["CsvRow", "csv_header", "iter_csv_rows", "read_csv_row"]


@dataclasses.dataclass(frozen=True)
class CsvRow:
    """One CSV record: its row number (header = 1), byte offset, and values by column name."""

    number: int
    offset: int
    values: dict[str, str]


def _open(path: str | os.PathLike) -> IO[bytes]:
    return gzip.open(path, "rb") if os.fspath(path).endswith(".gz") else open(path, "rb")


class _Lines:
    """The file's lines decoded, remembering the offset after the last line handed out."""

    def __init__(self, file: IO[bytes], origin: str):
        self.file, self.origin = file, origin
        self.offset = file.tell()
        self.first = self.offset == 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.file.readline()
        if not line:
            raise StopIteration
        self.offset = self.file.tell()
        if self.first and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        self.first = False
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SourceError(self.origin, "encoding", f"not UTF-8 text ({error})") from None


def _header(reader: Iterator[list[str]], path: str, required: Sequence[str]) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise SourceError(f"{path}:1", "header", "the file is empty")
    missing = [column for column in required if column not in header]
    if missing:
        raise SourceError(f"{path}:1", ",".join(missing), "missing column(s) in the header")
    return header


def csv_header(path: str | os.PathLike, required: Sequence[str] = ()) -> list[str]:
    """The column names of `path`; SourceError naming any `required` column it lacks."""
    with _open(path) as file:
        return _header(csv.reader(_Lines(file, f"{os.fspath(path)}:1")), os.fspath(path), required)


def iter_csv_rows(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[CsvRow]:
    """Every non-blank record after the header, in file order.

    Raises SourceError naming the file and row for a missing required column, a row with more
    fields than the header, or bytes that are not UTF-8.
    """
    name = os.fspath(path)
    with _open(path) as file:
        lines = _Lines(file, f"{name}:1")
        reader = csv.reader(lines)
        header = _header(reader, name, required)
        number = 1
        while True:
            offset = lines.offset
            lines.origin = f"{name}:{number + 1}"
            fields = next(reader, None)
            if fields is None:
                return
            number += 1
            if fields:
                yield CsvRow(number, offset, _values(header, fields, f"{name}:{number}"))


def read_csv_row(path: str | os.PathLike, header: Sequence[str], offset: int, number: int) -> CsvRow:
    """The record that starts at byte `offset` of `path` (found by `iter_csv_rows`)."""
    name = os.fspath(path)
    with _open(path) as file:
        file.seek(offset)
        fields = next(csv.reader(_Lines(file, f"{name}:{number}")), None)
    if not fields:
        raise SourceError(f"{name}:{number}", "row", f"no row at byte {offset} any more (was the file changed?)")
    return CsvRow(number, offset, _values(header, fields, f"{name}:{number}"))


def _values(header: Sequence[str], fields: list[str], origin: str) -> dict[str, str]:
    if len(fields) > len(header):
        raise SourceError(origin, "row", f"{len(fields)} fields for {len(header)} columns in the header")
    return dict(zip(header, fields + [""] * (len(header) - len(fields)), strict=True))
