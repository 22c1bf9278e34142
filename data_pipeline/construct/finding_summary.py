"""One report's findings, each summarised over its mentions, and their names in answer text.

A report may mention a finding several times ("Small left effusion." ... "No change in the left
effusion."); the stage generators ask about the finding once, with its overall status
(`ReportFacts.status`: present over uncertain over absent) and the attributes of the mentions
that carry that status.
"""

from __future__ import annotations

import dataclasses

from data_pipeline.construct.report_facts import ABSENT, PRESENT, UNCERTAIN, ReportFacts

__all__ = ["FindingSummary", "summarise_findings", "side_word", "location_text", "describe_finding",
           "PRESENT", "ABSENT", "UNCERTAIN"]


@dataclasses.dataclass(frozen=True)
class FindingSummary:
    """A finding as one report states it.

    status: the overall status; sentences: indices of the sentences whose mentions carry it, in
    report order; sides / regions / severity / change / phrases: merged over those mentions
    (sides as written, "bilateral" when both sides are named; the first severity and change
    stated; the naming phrases verbatim, lower-cased, each once).
    """

    finding: str
    category: str
    status: str
    sentences: tuple[int, ...]
    sides: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    severity: str | None = None
    change: str | None = None
    phrases: tuple[str, ...] = ()

    @property
    def is_device(self) -> bool:
        return self.category == "foreign_body"


def _merged_sides(sides: list[str]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(sides))
    if "bilateral" in unique or {"left", "right"} <= set(unique):
        return ("bilateral",)
    return unique


def summarise_findings(facts: ReportFacts) -> tuple[FindingSummary, ...]:
    """Every finding the report mentions, in order of first mention."""
    out = []
    for name in dict.fromkeys(m.finding for m in facts.mentions):
        status = facts.status(name)
        mentions = [m for m in facts.mentions if m.finding == name and m.status == status]
        out.append(FindingSummary(
            finding=name,
            category=mentions[0].category,
            status=status,
            sentences=tuple(dict.fromkeys(m.sentence for m in mentions)),
            sides=_merged_sides([s for m in mentions for s in m.sides]),
            regions=tuple(dict.fromkeys(r for m in mentions for r in m.regions)),
            severity=next((m.severity for m in mentions if m.severity), None),
            change=next((m.change for m in mentions if m.change), None),
            phrases=tuple(dict.fromkeys(m.phrase.lower() for m in mentions if m.phrase)),
        ))
    return tuple(out)


def side_word(summary: FindingSummary) -> str:
    """"right", "left", "bilateral" or "" (no side stated)."""
    return " and ".join(summary.sides)


def location_text(summary: FindingSummary) -> str:
    """Where the report places the finding: "right lower lobe", "lower lobe on both sides",
    "retrocardiac", "left side", "both sides"; "" when it states no side and no region."""
    side = side_word(summary)
    regions = " and ".join(summary.regions)
    if side == "bilateral":
        return f"{regions} on both sides" if regions else "both sides"
    if regions:
        return f"{side} {regions}".strip()
    return f"{side} side" if side else ""


def describe_finding(summary: FindingSummary) -> str:
    """A noun phrase for the finding with its stated attributes: "small right pleural effusion",
    "mild atelectasis in the left base", "endotracheal tube"."""
    words = [w for w in (summary.severity, "" if summary.regions else side_word(summary), summary.finding) if w]
    text = " ".join(words)
    if summary.regions:
        text += f" in the {location_text(summary)}"
    return text
