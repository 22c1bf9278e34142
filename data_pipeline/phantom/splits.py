"""Split specs of a generated phantom set: "train=0.8,validation=0.1,test=0.1" or counts."""

from __future__ import annotations

from data_pipeline.schema.splits import SPLIT_NAMES  # also the order rounding remainders are given in

__all__ = ["parse_splits"]


def parse_splits(spec: str, num_studies: int) -> dict[str, int]:
    """Split spec -> {split: count}.

    spec: fractions of `num_studies` that add up to 1 (rounding remainders go
        to the first splits) or counts that add up to `num_studies`.
    Raises ValueError naming the problem.
    """
    values: dict[str, str] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not value.strip():
            raise ValueError(f"splits: {part.strip()!r} is not NAME=VALUE")
        if name not in SPLIT_NAMES:
            raise ValueError(f"splits: unknown split {name!r}; expected {', '.join(SPLIT_NAMES)}")
        if name in values:
            raise ValueError(f"splits: split {name!r} given twice")
        values[name] = value.strip()
    if all(v.isdigit() for v in values.values()):
        counts = {k: int(v) for k, v in values.items()}
        if sum(counts.values()) != num_studies:
            raise ValueError(f"splits: counts add up to {sum(counts.values())}, "
                             f"not the number of studies {num_studies}")
        return counts
    try:
        fractions = {k: float(v) for k, v in values.items()}
    except ValueError:
        raise ValueError(f"splits: values must be all counts or all fractions, got {spec!r}") from None
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"splits: fractions must be non-negative and add up to 1, got {spec!r}")
    counts = {k: int(f * num_studies) for k, f in fractions.items()}
    for name in list(counts)[: num_studies - sum(counts.values())]:
        counts[name] += 1
    return counts
