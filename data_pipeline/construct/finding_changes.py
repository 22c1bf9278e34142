"""How each finding changed between two reports of one patient (stage 5: prior -> current; stage 6:
current -> next), from the later report's change words and both reports' statuses.

Rules, first match wins (`FindingChange.rule` names it):
  "change_word"        the later report says so: new, resolved, increased/worsened (worse),
                       decreased/improved (better), unchanged;
  "status"             present in the earlier report and absent in the later (resolved), or
                       absent before and present now (new);
  "severity"           present in both with severity words of one scale that differ (worse or
                       better by the scale's order);
  "present_in_both"    present in both, nothing said of a change: "persistent" (not "unchanged":
                       the reports do not say it kept its size).
A finding one report does not mention, or calls uncertain, gets no change (the reports do not
say) unless the later report's change word says it.
"""

from __future__ import annotations

import dataclasses

from data_pipeline.construct.finding_summary import ABSENT, PRESENT, FindingSummary, summarise_findings
from data_pipeline.construct.report_facts import ReportFacts

__all__ = ["CHANGE_KINDS", "FindingChange", "compare_reports"]

# The kinds of change, in the order they are reported.
CHANGE_KINDS = ("new", "resolved", "worse", "better", "unchanged", "persistent")
_CHANGE_WORDS = {"new": "new", "resolved": "resolved", "increased": "worse", "worsened": "worse",
                 "decreased": "better", "improved": "better", "unchanged": "unchanged"}
_SCALES = (("trace", "small", "moderate", "large"), ("minimal", "mild", "moderate", "severe"))


@dataclasses.dataclass(frozen=True)
class FindingChange:
    """One finding's change from the earlier to the later report (`CHANGE_KINDS`), the rule that
    decided it, and the finding as each report states it (None where that report is silent)."""

    finding: str
    category: str
    change: str
    rule: str
    earlier: FindingSummary | None
    later: FindingSummary | None


def _by_severity(earlier: FindingSummary, later: FindingSummary) -> str | None:
    for scale in _SCALES:
        if earlier.severity in scale and later.severity in scale and earlier.severity != later.severity:
            return "worse" if scale.index(later.severity) > scale.index(earlier.severity) else "better"
    return None


def _change(earlier: FindingSummary | None, later: FindingSummary | None) -> tuple[str, str] | None:
    """(change, rule) or None when the reports do not say."""
    if later is not None and later.change in _CHANGE_WORDS:
        return _CHANGE_WORDS[later.change], "change_word"
    if earlier is None or later is None:
        return None
    if earlier.status == PRESENT and later.status == ABSENT:
        return "resolved", "status"
    if earlier.status == ABSENT and later.status == PRESENT:
        return "new", "status"
    if earlier.status == PRESENT and later.status == PRESENT:
        graded = _by_severity(earlier, later)
        return (graded, "severity") if graded else ("persistent", "present_in_both")
    return None


def compare_reports(earlier: ReportFacts, later: ReportFacts) -> tuple[FindingChange, ...]:
    """The findings whose change the two reports determine, in order of `CHANGE_KINDS`, then of
    first mention (later report first)."""
    before = {s.finding: s for s in summarise_findings(earlier)}
    after = {s.finding: s for s in summarise_findings(later)}
    changes = []
    for name in dict.fromkeys(list(after) + list(before)):
        found = _change(before.get(name), after.get(name))
        if found is not None:
            category = (after.get(name) or before[name]).category
            changes.append(FindingChange(name, category, found[0], found[1], before.get(name), after.get(name)))
    return tuple(sorted(changes, key=lambda c: CHANGE_KINDS.index(c.change)))
