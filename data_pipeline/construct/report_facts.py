"""The report side's contract: what a free-text radiology report says, as the stage generators use it.

`read_report(text) -> ReportFacts` (module `report_reader`) fills these; every fact points back to
the sentence it came from, so each generated answer can carry its provenance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = [
    "SECTIONS", "STATUSES", "CATEGORIES", "CHANGES", "RELATION_KINDS",
    "ReportSentence", "FindingMention", "FindingRelation", "TechniqueFacts", "ReportFacts",
]

# Canonical section names; a report without headers has all its text in "findings". The last three
# hold what some reports add: the radiologist's notification of a finding ("NOTIFICATION:"), an
# addendum, and the preliminary wet read above MIMIC-CXR's "FINAL REPORT" (kept, never read for facts).
SECTIONS = ("examination", "indication", "technique", "comparison", "findings", "impression", "recommendation",
            "notification", "addendum", "wet_read")
PRESENT, ABSENT, UNCERTAIN = "present", "absent", "uncertain"
STATUSES = (PRESENT, ABSENT, UNCERTAIN)
# The authors' two kinds of stage-2 target: `abnormality_[name]`, `foreign_body_[name]`.
CATEGORIES = ("abnormality", "foreign_body")
# Change words against the prior study, normalised.
CHANGES = ("new", "increased", "decreased", "unchanged", "resolved", "improved", "worsened")
RELATION_KINDS = ("associated_with", "likely_reflecting", "due_to", "consistent_with")


@dataclasses.dataclass(frozen=True)
class ReportSentence:
    """One sentence: its section, its 0-based index in the report, its verbatim text."""

    section: str
    index: int
    text: str


@dataclasses.dataclass(frozen=True)
class FindingMention:
    """One mention of a finding in one sentence.

    finding: canonical finding name in lower case ("pleural effusion", "atelectasis", "picc line").
    category: "abnormality" or "foreign_body" (support devices of any type).
    status: "present", "absent" or "uncertain" (negation and hedging resolved).
    sentence: index of its `ReportSentence`; phrase: the words that named it, verbatim.
    sides: subset of ("left", "right", "bilateral"); regions: zone/lobe/part words as written in
        normalised form ("lower lobe", "base", "apex", "upper zone", "retrocardiac", ...).
    severity: a severity or size word ("trace", "small", "mild", "moderate", "large", "severe", a range such
        as "mild to moderate") or a measured size ("1.5 cm"), or None.
    change: one of `CHANGES` against the prior study, or None.
    """

    finding: str
    category: str
    status: str
    sentence: int
    phrase: str
    sides: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    severity: str | None = None
    change: str | None = None


@dataclasses.dataclass(frozen=True)
class FindingRelation:
    """Two findings linked by one sentence ("effusion with associated atelectasis")."""

    kind: str
    source: str
    target: str
    sentence: int


@dataclasses.dataclass(frozen=True)
class TechniqueFacts:
    """Acquisition and quality as the report states them (None: not stated)."""

    view: str | None = None  # one of source_study.VIEWS
    portable: bool | None = None
    rotated: bool | None = None
    inspiration: str | None = None  # "low", "adequate"
    excluded_anatomy: tuple[str, ...] = ()  # e.g. ("right costophrenic angle",)
    sentences: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ReportFacts:
    """Everything the stage generators use from one report."""

    sections: Mapping[str, str]
    sentences: tuple[ReportSentence, ...]
    mentions: tuple[FindingMention, ...]
    relations: tuple[FindingRelation, ...] = ()
    recommendations: tuple[int, ...] = ()
    technique: TechniqueFacts = TechniqueFacts()

    def status(self, finding: str) -> str | None:
        """The finding's status over all its mentions: present over uncertain over absent; None if
        the report never mentions it."""
        found = {m.status for m in self.mentions if m.finding == finding}
        for status in (PRESENT, UNCERTAIN, ABSENT):
            if status in found:
                return status
        return None

    def findings(self, status: str) -> tuple[str, ...]:
        """The findings whose overall status is `status`, in order of first mention."""
        names = dict.fromkeys(m.finding for m in self.mentions)
        return tuple(n for n in names if self.status(n) == status)
