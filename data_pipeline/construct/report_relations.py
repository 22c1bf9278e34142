"""Findings a sentence links: "effusion with associated atelectasis", "opacity, likely atelectasis".

A relation phrase (`context.json` "relations") links the finding just before it (its source) to
the findings it reaches after it, as a labeller pre cue reaches a list ("opacities, which may
represent atelectasis or pneumonia": two relations). Neither end may be absent or hypothetical
(`report_mentions.hypothetical`), and a finding is never linked to itself ("the heart is enlarged,
consistent with cardiomegaly").
"""

from __future__ import annotations

from data_pipeline.construct.report_facts import ABSENT, FindingRelation
from data_pipeline.construct.report_mentions import hypothetical, roles
from data_pipeline.construct.report_rules import NORMAL_PREFIX
from data_pipeline.construct.report_scan import SentenceScan, SentenceScanner

__all__ = ["sentence_relations"]


def sentence_relations(scanner: SentenceScanner, scan: SentenceScan, index: int) -> list[FindingRelation]:
    """The relations of a scanned sentence (`index`: the sentence's index in the report), in order."""
    relations: list[FindingRelation] = []
    unstated = hypothetical(scanner, scan)
    for cue in scan.context:
        kinds = [value for role, value in roles(cue.kind) if role == "relation"]
        before = [i for i, s in enumerate(scan.spans) if s.end <= cue.start]
        if not kinds or not before:
            continue
        source = before[-1]
        if scan.statuses[source] == ABSENT or scan.spans[source].kind.startswith(NORMAL_PREFIX) or source in unstated:
            continue
        for target in sorted(scanner.reach(scan, cue, True, scan.cues)):
            name, origin = scan.spans[target].kind, scan.spans[source].kind
            if scan.statuses[target] == ABSENT or name.startswith(NORMAL_PREFIX) or name == origin:
                continue
            if target in unstated:
                continue
            relation = FindingRelation(kinds[0], origin, name, index)
            if relation not in relations:
                relations.append(relation)
    return relations
