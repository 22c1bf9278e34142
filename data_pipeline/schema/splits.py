"""The data splits: their names, in order, and the spellings a study's `split` field may use.

The one definition: the TFDS build writes these splits, a phantom split spec names them, the
trainer and evaluation read them by these names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TRAIN", "VALIDATION", "TEST", "SPLIT_NAMES", "SPLIT_ALIASES", "canonical_split", "split_field",
           "study_split"]

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLIT_NAMES = (TRAIN, VALIDATION, TEST)
# Spelling in the data (lowercased, stripped) -> split name.
SPLIT_ALIASES = {
    "train": TRAIN,
    "training": TRAIN,
    "validation": VALIDATION,
    "valid": VALIDATION,
    "val": VALIDATION,
    "test": TEST,
}


def canonical_split(value: object) -> str | None:
    """The split a `split` field names (any `SPLIT_ALIASES` spelling, any case), None when none."""
    return SPLIT_ALIASES.get(value.strip().lower()) if isinstance(value, str) else None


def split_field(study: Any) -> tuple[str, Any] | None:
    """(where, value) of a study's `split` field, None when it has none.

    where: "cxrtrek_data" (`data_dict.cxrtrek_data.split`, read first) or "element" (the
    element's own `split`).
    """
    for where, extras in (("cxrtrek_data", study.cxrtrek_extras), ("element", study.extras)):
        if "split" in extras:
            return where, extras["split"]
    return None


def study_split(study: Any) -> str | None:
    """The split a study's `split` field names (`canonical_split`), None when it has no such field.

    Raises ValueError naming the study and the value for a spelling that names no split.
    """
    found = split_field(study)
    if found is None:
        return None
    name = canonical_split(found[1])
    if name is None:
        raise ValueError(f"study {study.key!r}: unknown split {found[1]!r}; expected one of {', '.join(SPLIT_ALIASES)}")
    return name
