"""Atomic writes: a target file (or directory) is replaced whole or not at all.

Every writer whose output a reader, another process or a resumed run may meet half-written goes
through here. The content is written to a fresh temporary sibling (same directory, so the same
file system), flushed and fsync'ed (files), then renamed over the target with `os.replace`, which
is atomic on POSIX. If anything fails before the rename, the temporary is removed and the target
keeps its old content (or stays absent); the error propagates.

The temporary is `.<name>.<pid>.<8 hex>.tmp` beside the target, created exclusively (never
another writer's file). It is created like a plain `open(target, "w")` would create the target:
mode 0o666 minus the umask; the target's previous mode is not carried over. A process killed
mid-write leaves its temporary behind (a hidden file; the target is untouched).

This module lives in `data_pipeline.files` (stdlib only) so that both the data side and the
library (`cxrtrek_jax`) use the one implementation.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["open_atomically", "write_text_atomically", "write_bytes_atomically",
           "replace_directory_atomically"]

_MODES = ("w", "wb")


def _temporary_sibling(target: str) -> str:
    """A not-yet-existing hidden path in `target`'s directory, unique to this process and call."""
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def open_atomically(path: str | os.PathLike, mode: str = "w", *,
                    encoding: str | None = "utf-8") -> Iterator[IO]:
    """`with open_atomically(path) as f: f.write(...)`: `path` holds exactly what was written once
    the block exits normally; if the block (or the write-out) raises, `path` is unchanged and no
    temporary is left.

    mode: "w" (text, in `encoding`) or "wb" (bytes; `encoding` is ignored). The parent directory
    must exist.
    """
    if mode not in _MODES:
        raise ValueError(f"open_atomically({os.fspath(path)!r}): mode must be one of {_MODES}, got {mode!r}")
    target = os.fspath(path)
    tmp = _temporary_sibling(target)
    exclusive = mode.replace("w", "x")
    try:
        with open(tmp, exclusive, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_text_atomically(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Replace `path` with `text` (encoded in `encoding`), whole or not at all."""
    with open_atomically(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data`, whole or not at all."""
    with open_atomically(path, "wb") as f:
        f.write(data)


def replace_directory_atomically(directory: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` creates a directory at the temporary sibling `tmp` (which does not exist yet;
    e.g. `shutil.copytree(src, tmp)` or a tokenizer's `save`); it is then renamed to `directory`,
    so a `directory` that exists is complete. `directory` must not exist or be empty (`os.replace`
    does not replace a non-empty directory: OSError). If `write` or the rename fails, the
    temporary is removed and the error propagates. Files inside are not fsync'ed."""
    target = os.fspath(directory)
    tmp = _temporary_sibling(target)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            os.remove(tmp)
