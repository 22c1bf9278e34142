"""Configuration of the procedural chest X-ray phantom."""

from __future__ import annotations

import dataclasses

__all__ = ["Prevalences", "PhantomConfig", "TURN_ORDERS"]

# "canonical": turns sorted by stage (1..8). "by_finding": each finding's stage-2
# question is followed directly by its stage-3 questions (stages interleave,
# as in parts of the released data), everything else stays in stage order.
TURN_ORDERS = ("canonical", "by_finding")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"PhantomConfig.{name} must be a probability in [0, 1], got {value!r}")


@dataclasses.dataclass(frozen=True)
class Prevalences:
    """Probability that a study shows each finding (sampled independently, then
    made anatomically consistent: e.g. no pneumothorax on the side of an effusion)."""

    pleural_effusion: float = 0.32
    cardiomegaly: float = 0.28
    pneumothorax: float = 0.14
    consolidation: float = 0.28
    nodule: float = 0.2
    support_devices: float = 0.25

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_probability(f"prevalences.{field.name}", getattr(self, field.name))

    def of(self, kind: str) -> float:
        return float(getattr(self, kind))


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    """How phantom studies are drawn.

    size: image side in pixels (square images).
    prob_ap: probability that a frontal view is AP (else PA).
    prob_rotation / prob_low_inspiration: quality issues per exam.
    prob_lateral: probability that the current study also has a lateral view.
    prob_prior / prob_later: probability of a prior study (stage 5) and of a
        later study (stage 6) of the same patient.
    prob_change: probability that a finding present in one exam of the patient
        differs (new/resolved/larger/smaller) in the next one; else unchanged.
    prob_appear: probability that a finding absent in one exam appears in the
        next one (a "new" finding, or a "resolved" one seen backwards).
    turns_per_study: (min, max) target number of QA turns; each study draws a
        target uniformly in this range and adds optional image-grounded
        questions up to it. Required turns are never dropped, so a study with
        many findings can exceed the maximum.
    turn_order: one of TURN_ORDERS.
    noise_std: standard deviation of the additive pixel noise (image units).
    source: the `source` field written for every study.
    """

    size: int = 256
    prob_ap: float = 0.35
    prob_rotation: float = 0.2
    prob_low_inspiration: float = 0.2
    prob_lateral: float = 0.15
    prob_prior: float = 0.45
    prob_later: float = 0.3
    prob_change: float = 0.7
    prob_appear: float = 0.12
    prevalences: Prevalences = Prevalences()
    turns_per_study: tuple[int, int] = (20, 26)
    turn_order: str = "canonical"
    noise_std: float = 0.012
    source: str = "phantom-mtxray"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 64 <= self.size <= 2048:
            raise ValueError(f"PhantomConfig.size must be an integer in 64..2048, got {self.size!r}")
        for name in (
            "prob_ap",
            "prob_rotation",
            "prob_low_inspiration",
            "prob_lateral",
            "prob_prior",
            "prob_later",
            "prob_change",
            "prob_appear",
        ):
            _check_probability(name, getattr(self, name))
        low, high = self.turns_per_study
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise ValueError(
                f"PhantomConfig.turns_per_study must be (min, max) integers with 1 <= min <= max, "
                f"got {self.turns_per_study!r}"
            )
        if self.turn_order not in TURN_ORDERS:
            raise ValueError(
                f"PhantomConfig.turn_order must be one of {TURN_ORDERS}, got {self.turn_order!r}"
            )
        if not 0.0 <= self.noise_std <= 0.2:
            raise ValueError(f"PhantomConfig.noise_std must be in [0, 0.2], got {self.noise_std!r}")
        if not self.source:
            raise ValueError("PhantomConfig.source must be a non-empty string")
