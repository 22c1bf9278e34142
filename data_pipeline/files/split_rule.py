"""The one split rule: which split (train / validation / test) a study belongs to.

A study's own `split` field (`data_dict.cxrtrek_data.split`, else the element's `split`; any
spelling of `data_pipeline.schema.splits.SPLIT_ALIASES`) when it has one; otherwise a hash of
(seed, `pat_id`), so every study of a patient lands in the same split (`patient_split`). The TFDS
build (`tfds_builder`) writes its splits with this rule, and `datasets.open_dataset` reads the
splits of a JSON file with it, so training, evaluation, inference, the case report and the blind
baseline agree on which study is in which split whatever form the data comes in.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from data_pipeline.schema.splits import SPLIT_ALIASES, TEST, TRAIN, VALIDATION, canonical_split, split_field

__all__ = ["SplitConfig", "SplitRuleError", "patient_split", "assign_split"]


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Patient-level hashed split of the studies without a `split` field: fractions of patients
    in validation and test (each in [0, 1), together < 1) and the hash seed."""

    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (train must keep patients), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )


class SplitRuleError(ValueError):
    """A study the rule cannot place: `field` ("split" or "pat_id") and `reason`; `in_cxrtrek_data`
    says whether the field lives in `data_dict.cxrtrek_data` (else at the element's top level)."""

    def __init__(self, study_key: str, field: str, in_cxrtrek_data: bool, reason: str):
        super().__init__(f"study {study_key!r}: {field}: {reason}")
        self.field, self.in_cxrtrek_data, self.reason = field, in_cxrtrek_data, reason


def patient_split(pat_id: str, config: SplitConfig) -> str:
    """The split of a patient: sha256(seed, pat_id) -> u in [0, 1); test when
    u < test_fraction, validation when u < test + val fraction, else train."""
    digest = hashlib.sha256(f"{config.seed}\x00{pat_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < config.test_fraction:
        return TEST
    if u < config.test_fraction + config.val_fraction:
        return VALIDATION
    return TRAIN


def assign_split(study: Any, config: SplitConfig) -> str:
    """The split of a `Study` by the rule (module docstring). Raises SplitRuleError for a `split`
    field that names no split, or for a study with neither a `split` field nor a `pat_id`."""
    found = split_field(study)
    if found is not None:
        where, value = found
        name = canonical_split(value)
        if name is None:
            raise SplitRuleError(study.key, "split", where == "cxrtrek_data",
                                 f"unknown split {value!r}; expected one of {', '.join(SPLIT_ALIASES)}")
        return name
    if not study.pat_id:
        raise SplitRuleError(study.key, "pat_id", True,
                             "empty; the patient-level split needs it (or give a 'split' field)")
    return patient_split(study.pat_id, config)
