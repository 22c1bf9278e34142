"""Finding mentions of one scanned sentence: finding, status, sides, regions, severity, change.

Modifiers are read in a window around each finding span: up to `modifier_window.before` tokens
before it and `after` tokens after it, never across punctuation, another finding, a stop word
("right effusion and left atelectasis": the effusion is right only) or a relation phrase ("opacity
at the right base could reflect aspiration": the aspiration has no side), plus the words inside the
span ("the heart is mildly enlarged"). A device takes its side and nothing else from the words
before it only ("left PICC terminates in the right atrium" is a left PICC).

Change words reach findings as the labeller's cues do (pre words forward over a list, post words
backward; the labeller's scope terminators stop them, "which" excepted: "effusion, which has
increased", and so do "with", relation and hypothetical phrases: "increased effusion with adjacent
atelectasis" says nothing of the atelectasis' change); a change word inside a finding's gap phrase
("the heart remains enlarged") is that finding's. The nearest reaching word wins; an absent finding
keeps only "resolved", a present or uncertain one never takes it.

A finding reached by a hypothetical phrase (`context.json` "hypothetical": "requires", "recommend",
"to document", ...; forward, with the labeller's scope rules) is asked for or to be checked, not
stated: it gives no mention ("the pneumothorax requires chest tube placement" states no chest tube;
"follow-up to document resolution of the pneumonia" states nothing of the pneumonia).
"""

from __future__ import annotations

import functools
import re

from data_pipeline.construct.report_facts import ABSENT, FindingMention
from data_pipeline.construct.report_rules import NORMAL_PREFIX, ReaderRules
from data_pipeline.construct.report_scan import SentenceScan, SentenceScanner, Span
from data_pipeline.reports.chexpert_labeller import _PUNCT

__all__ = ["roles", "hypothetical", "sentence_mentions"]

_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_SIDE_ORDER = ("left", "right", "bilateral")


@functools.lru_cache(maxsize=4096)
def roles(kind: str) -> tuple[tuple[str, str], ...]:
    """A context span's roles: "side=left|region=base" -> (("side", "left"), ("region", "base"))."""
    return tuple(tuple(role.split("=", 1)) for role in kind.split("|"))  # type: ignore[misc]


def hypothetical(scanner: SentenceScanner, scan: SentenceScan) -> set[int]:
    """Indices of the finding spans a hypothetical phrase reaches ("requires chest tube placement")."""
    reached: set[int] = set()
    for cue in scan.context:
        if any(role == "hypothetical" for role, _ in roles(cue.kind)):
            reached |= scanner.reach(scan, cue, True, scan.cues)
    return reached


def _window_stops(scan: SentenceScan, rules: ReaderRules) -> frozenset[int]:
    """Token positions a modifier window never crosses: punctuation, stop words, relation phrases."""
    stops = {j for j, token in enumerate(scan.tokens) if token in _PUNCT or token in rules.window_stops}
    for c in scan.context:
        if any(role == "relation" for role, _ in roles(c.kind)):
            stops.update(range(c.start, c.end))
    return frozenset(stops)


def _window(scan: SentenceScan, i: int, rules: ReaderRules, device: bool, stops: frozenset[int]) -> tuple[int, int]:
    """Token bounds [start, end) of span i's modifier window."""
    span = scan.spans[i]
    previous_end = scan.spans[i - 1].end if i else 0
    next_start = scan.spans[i + 1].start if i + 1 < len(scan.spans) else len(scan.tokens)
    start = span.start
    while start > previous_end and span.start - start < rules.window_before and start - 1 not in stops:
        start -= 1
    end = span.end
    while not device and end < next_start and end - span.end < rules.window_after and end not in stops:
        end += 1
    return start, end


def _measurement(tokens: tuple[str, ...], start: int, end: int, units: frozenset[str]) -> str | None:
    """A size written in [start, end): "1.5 cm", "2 x 3 cm"."""
    for j in range(start, end - 1):
        if _NUMBER.match(tokens[j]):
            k = j
            while k + 2 < end and tokens[k + 1] == "x" and _NUMBER.match(tokens[k + 2]):
                k += 2
            if k + 1 < end and tokens[k + 1] in units:
                return " ".join(tokens[j : k + 2])
    return None


def _modifiers(scan: SentenceScan, i: int, rules: ReaderRules, device: bool, stops: frozenset[int]):
    """(sides, regions, severity) of span i."""
    span = scan.spans[i]
    start, end = _window(scan, i, rules, device, stops)
    sides: set[str] = set()
    regions: list[str] = []
    severity: list[tuple[int, str]] = []
    for c in scan.context:
        if c.start < start or c.end > end:
            continue
        for role, value in roles(c.kind):
            if role == "side":
                sides.add(value)
            elif role == "region" and not device and value not in regions:
                regions.append(value)
            elif role == "severity" and not device:
                severity.append((max(span.start - c.end, c.start - span.end, 0), value))
    if "bilateral" in sides or {"left", "right"} <= sides:
        sides = {"bilateral"}
    size = min(severity)[1] if severity else None
    if size is None and not device:
        size = _measurement(scan.tokens, start, end, rules.size_units)
    return tuple(s for s in _SIDE_ORDER if s in sides), tuple(regions), size


def _change_candidates(scanner: SentenceScanner, scan: SentenceScan) -> list[list[tuple[int, str]]]:
    """Per finding span: (distance, change) of every change word reaching it."""
    candidates: list[list[tuple[int, str]]] = [[] for _ in scan.spans]
    cues = [c for c in scan.cues if scan.tokens[c.start : c.end] != ("which",)]
    cues += [Span(c.start, c.end, "scope_terminators") for c in scan.context
             if any(role in ("relation", "hypothetical") for role, _ in roles(c.kind))]
    cues += [Span(j, j + 1, "scope_terminators") for j, token in enumerate(scan.tokens) if token == "with"]
    for cue in scan.context:
        for role, value in roles(cue.kind):
            if role not in ("change_pre", "change_post"):
                continue
            holders = [i for i, s in enumerate(scan.spans) if s.start < cue.end and cue.start < s.end]
            if holders:  # inside a span's gap: that finding's; on a span's own words: none
                span = scan.spans[holders[0]]
                if len(holders) == 1 and span.start < cue.start and cue.end < span.end:
                    candidates[holders[0]].append((0, value))
                continue
            for i in scanner.reach(scan, cue, role == "change_pre", cues):
                span = scan.spans[i]
                candidates[i].append((cue.start - span.end if span.end <= cue.start else span.start - cue.end, value))
    return candidates


def _change(candidates: list[tuple[int, str]], status: str) -> str | None:
    allowed = [(d, v) for d, v in candidates if (v == "resolved") == (status == ABSENT)]
    return min(allowed, key=lambda c: c[0])[1] if allowed else None


def sentence_mentions(scanner: SentenceScanner, scan: SentenceScan, index: int) -> list[FindingMention]:
    """The finding mentions of a scanned sentence (`index`: the sentence's index in the report)."""
    rules = scanner.rules
    mentions = []
    changes = _change_candidates(scanner, scan)
    stops = _window_stops(scan, rules)
    unstated = hypothetical(scanner, scan)
    for i, span in enumerate(scan.spans):
        if i in unstated:
            continue
        names = span.kind[len(NORMAL_PREFIX) :].split("|") if span.kind.startswith(NORMAL_PREFIX) else [span.kind]
        device = rules.findings[names[0]].category == "foreign_body"
        sides, regions, severity = _modifiers(scan, i, rules, device, stops)
        change = _change(changes[i], scan.statuses[i])
        phrase = scan.phrase(span.start, span.end)
        for name in names:
            mentions.append(FindingMention(
                finding=name, category=rules.findings[name].category, status=scan.statuses[i], sentence=index,
                phrase=phrase, sides=sides, regions=regions, severity=severity, change=change,
            ))
    return mentions
