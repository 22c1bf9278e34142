"""The eight CXRTrek diagnostic stages, their task types and the question types.

CXRTrek (Guan et al., 2025) frames reading a chest X-ray as eight sequential
stages. The stage number is what matters downstream (per-stage losses,
metrics, context threading); task types are kept as found in the data, and a
task type not listed here is a warning, not an error.
"""

from __future__ import annotations

import dataclasses
import enum
import re

__all__ = [
    "Stage",
    "NUM_STAGES",
    "STAGE_NUMBERS",
    "STAGE_TASK_TYPES",
    "REPORT_TASK_SUFFIXES",
    "QTYPE_KINDS",
    "QType",
    "parse_qtype",
    "is_known_task_type",
    "stage_for_task_type",
]


class Stage(enum.IntEnum):
    """A diagnostic stage, numbered 1..8 as in the released data."""

    QUALITY_VIEW = 1
    FINDINGS = 2
    ATTRIBUTES = 3
    RELATIONSHIPS = 4
    COMPARISON = 5
    FUTURE_TREND = 6
    ADVICE = 7
    REPORT = 8

    @property
    def title(self) -> str:
        return _TITLES[self]

    @classmethod
    def parse(cls, value: object) -> "Stage":
        """Stage from an int (or int-like string); ValueError naming the value otherwise."""
        if isinstance(value, bool):
            raise ValueError(f"stage must be an integer {_RANGE}, got {value!r}")
        try:
            number = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"stage must be an integer {_RANGE}, got {value!r}") from None
        if isinstance(value, float) and value != number:
            raise ValueError(f"stage must be an integer {_RANGE}, got {value!r}")
        try:
            return cls(number)
        except ValueError:
            raise ValueError(f"stage must be in {_RANGE}, got {value!r}") from None


# How many stages there are, and their numbers in order: the one definition (from `Stage`).
NUM_STAGES = len(Stage)
STAGE_NUMBERS = tuple(int(stage) for stage in Stage)
_RANGE = f"{STAGE_NUMBERS[0]}..{STAGE_NUMBERS[-1]}"

_TITLES = {
    Stage.QUALITY_VIEW: "image quality and view",
    Stage.FINDINGS: "findings identification",
    Stage.ATTRIBUTES: "finding attributes and localisation",
    Stage.RELATIONSHIPS: "relationships between findings",
    Stage.COMPARISON: "comparison with the prior study",
    Stage.FUTURE_TREND: "future trend",
    Stage.ADVICE: "diagnostic advice",
    Stage.REPORT: "report generation",
}

REPORT_TASK_SUFFIXES = (
    "ALL",
    "Findings",
    "Impression",
    "Impression_with_findings",
    "Impression_without_findings",
)

STAGE_TASK_TYPES: dict[Stage, tuple[str, ...]] = {
    Stage.QUALITY_VIEW: ("Quality_Assessment", "View_Information"),
    Stage.FINDINGS: ("Findings_Identification",),
    # A few released samples carry Findings_Identification at stage 3.
    Stage.ATTRIBUTES: (
        "Attributes_Description",
        "Findings_Detection",
        "Phrase_Grounding",
        "Findings_Identification",
    ),
    Stage.RELATIONSHIPS: ("Relationships_Analysis",),
    Stage.COMPARISON: ("Differences_Comparison", "Differences_Comparison[Choice]"),
    Stage.FUTURE_TREND: ("Future_Trend_Analysis",),
    Stage.ADVICE: ("Diagnosis_Advice",),
    Stage.REPORT: ("Report_Generation",)
    + tuple(f"Report_Generation[{s}]" for s in REPORT_TASK_SUFFIXES),
}

# Stages present in almost every study, and the optional ones.
CORE_STAGES = (Stage.QUALITY_VIEW, Stage.FINDINGS, Stage.ATTRIBUTES, Stage.REPORT)
OPTIONAL_STAGES = (Stage.RELATIONSHIPS, Stage.COMPARISON, Stage.FUTURE_TREND, Stage.ADVICE)


def is_known_task_type(stage: Stage | int, task_type: str) -> bool:
    """Whether `task_type` is one of the released task types of `stage`."""
    return task_type in STAGE_TASK_TYPES[Stage(int(stage))]


def stage_for_task_type(task_type: str) -> Stage | None:
    """The canonical stage of a task type (first match), or None when unknown."""
    for stage, names in STAGE_TASK_TYPES.items():
        if task_type in names and not (
            stage == Stage.ATTRIBUTES and task_type == "Findings_Identification"
        ):
            return stage
    return None


QTYPE_KINDS = ("yes_no", "single-choice", "multi-choice", "captioning", "detection")
_MULTI_N = re.compile(r"^multi-choice-(\d+)$")


@dataclasses.dataclass(frozen=True)
class QType:
    """A parsed question type.

    kind: one of QTYPE_KINDS.
    n_options: number of options for `multi-choice-N`, else None.
    """

    kind: str
    n_options: int | None = None

    @property
    def is_closed(self) -> bool:
        """Closed-ended questions are scored by accuracy after answer parsing."""
        return self.kind in ("yes_no", "single-choice", "multi-choice")

    def __str__(self) -> str:
        if self.kind == "multi-choice" and self.n_options is not None:
            return f"multi-choice-{self.n_options}"
        return self.kind


def parse_qtype(value: str) -> QType:
    """Parse a qtype string; ValueError naming the value when unknown."""
    if not isinstance(value, str):
        raise ValueError(f"qtype must be a string, got {type(value).__name__} {value!r}")
    if value in QTYPE_KINDS:
        return QType(value)
    match = _MULTI_N.match(value)
    if match and int(match.group(1)) >= 2:
        return QType("multi-choice", int(match.group(1)))
    raise ValueError(
        f"unknown qtype {value!r}; expected one of {', '.join(QTYPE_KINDS)} or multi-choice-N (N >= 2)"
    )
