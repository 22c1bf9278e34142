"""Whether an output is current: a stamp file records what the output was made from.

Every step that skips work when its output is already there (the trainer's phantom set and TFDS
build, `.complete`; an evaluation directory, `inputs.json`; the demo's run and export,
`demo_inputs.json`) asks the same question the same way:

    if not is_current(stamp, inputs):
        ...make the output...
        write_stamp(stamp, inputs)

`inputs` is a JSON-able dict of what the output depends on (a config's `to_dict()`, a recipe, a
checkpoint's identity, file hashes); it is compared as JSON reads it back (`normalised`: tuples
as lists, other objects by `str`), so a stamp written by an earlier run compares equal to the
same inputs now. The stamp is written after the output is complete, and atomically, so a stamp
that exists vouches for a whole output; a missing or unreadable stamp (a run killed while
writing it) means "not current", never an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_pipeline.files.atomic_write import write_text_atomically

__all__ = ["normalised", "read_stamp", "is_current", "write_stamp"]


def normalised(inputs: Mapping[str, Any]) -> Any:
    """`inputs` as a stamp holds them: through JSON and back (tuples become lists, keys strings,
    values JSON cannot hold their `str`)."""
    return json.loads(json.dumps(dict(inputs), default=str))


def read_stamp(path: str | os.PathLike) -> Any:
    """What the stamp file `path` records. Raises FileNotFoundError when it is missing and
    ValueError (naming the file) when it is not JSON."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"stamp {path}: not JSON ({err}); the output it stamps is not current") from None


def is_current(path: str | os.PathLike, inputs: Mapping[str, Any], *,
               requires: tuple[str | os.PathLike, ...] = ()) -> bool:
    """Whether the stamp file `path` records exactly `inputs` (`normalised`) and every file of
    `requires` exists. A missing or unreadable stamp is not current."""
    try:
        recorded = read_stamp(path)
    except (FileNotFoundError, ValueError):
        return False
    return recorded == normalised(inputs) and all(Path(p).is_file() for p in requires)


def write_stamp(path: str | os.PathLike, inputs: Mapping[str, Any]) -> None:
    """Record `inputs` at `path` (JSON, indented, `normalised`), whole or not at all."""
    write_text_atomically(path, json.dumps(normalised(inputs), indent=2) + "\n")
