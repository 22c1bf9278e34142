"""Acquisition and quality as a report states them: view, portable, rotation, inspiration, excluded anatomy.

Read from the technique phrases of `context.json` in the sentences given (the reader gives those
of every section but indication, comparison and the wet read):
- view: the first "PA"/"AP" stated ("PA and lateral views" -> PA), words after a comparison word
  ("compared to the prior AP view") not counted; failing that a portable or supine film is AP,
  and a lateral view alone is LATERAL;
- portable: True when stated ("AP portable", "single portable view"), else None;
- rotated: True for "the patient is rotated", False when negated as the labeller negates ("no
  rotation", "the patient is not rotated");
- inspiration: "low" ("low lung volumes", "shallow inspiration") or "adequate";
- excluded anatomy: in a sentence with an exclusion phrase ("is excluded", "not included on the
  film"), each anatomy part it names, with its side ("left costophrenic angle").
Words inside a finding mention ("increased AP diameter", "PA catheter") are not technique.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_pipeline.construct.report_facts import TechniqueFacts
from data_pipeline.construct.report_mentions import roles
from data_pipeline.construct.report_rules import NORMAL_PREFIX
from data_pipeline.construct.report_scan import SentenceScan, SentenceScanner, Span

__all__ = ["technique_facts"]


def _roles_of(scan: SentenceScan) -> list[tuple[Span, str, str]]:
    """(span, role, value) of the sentence's technique words, in order, outside finding mentions."""
    mentions = [s for s in scan.spans if not s.kind.startswith(NORMAL_PREFIX)]
    found = []
    for span in scan.context:
        if any(m.start < span.end and span.start < m.end for m in mentions):
            continue
        found += [(span, role, value) for role, value in roles(span.kind)]
    return found


def _views(
    found: list[tuple[Span, str, str]], scan: SentenceScan, comparison: frozenset[str]
) -> list[tuple[str, bool]]:
    """(view, stated outright) of the sentence, before any comparison word; portable/supine imply AP."""
    stop = next((j for j, token in enumerate(scan.tokens) if token in comparison), len(scan.tokens))
    views = []
    for span, role, value in found:
        if span.end <= stop and role in ("view", "portable", "supine"):
            views.append((value, True) if role == "view" else ("AP", False))
    return views


def _excluded(found: list[tuple[Span, str, str]], scan: SentenceScan) -> list[str]:
    if not any(role == "exclusion" for _, role, _ in found):
        return []
    parts = []
    for span, role, value in found:
        if role == "anatomy":
            sides = [v for s, r, v in found if r == "side" and span.start - 2 <= s.start and s.end <= span.start]
            parts.append(f"{sides[-1]} {value}" if sides else value)
    return parts


_TECHNIQUE_ROLES = frozenset({"view", "portable", "supine", "rotation", "inspiration", "exclusion"})


def technique_facts(scanner: SentenceScanner, scans: Sequence[tuple[int, SentenceScan]]) -> TechniqueFacts:
    """Technique facts of the (sentence index, scan) pairs given, in report order."""
    views: list[tuple[str, bool]] = []
    portable = rotated = inspiration = None
    excluded: list[str] = []
    used: list[int] = []
    for index, scan in scans:
        found = _roles_of(scan)
        if not any(role in _TECHNIQUE_ROLES for _, role, _ in found):
            continue
        used.append(index)
        views += _views(found, scan, scanner.rules.comparison_words)
        rotation = [span for span, role, _ in found if role == "rotation"]
        if rotation:
            negated = scanner.reached(scan, rotation, {"negation_pre", "negation_post"})
            rotated = bool(rotated) or len(negated) < len(rotation)
        portable = True if any(role == "portable" for _, role, _ in found) else portable
        inspiration = inspiration or next((v for _, role, v in found if role == "inspiration"), None)
        excluded += [part for part in _excluded(found, scan) if part not in excluded]
    return TechniqueFacts(_pick_view(views), portable, rotated, inspiration, tuple(excluded), tuple(used))


def _pick_view(views: list[tuple[str, bool]]) -> str | None:
    """The first frontal view stated outright, else a frontal one implied (portable, supine), else LATERAL."""
    for wanted in ((True, ("PA", "AP")), (False, ("PA", "AP")), (True, ("LATERAL",))):
        outright, names = wanted
        match = next((v for v, stated in views if v in names and stated == outright), None)
        if match:
            return match
    return None
