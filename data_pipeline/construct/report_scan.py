"""One sentence scanned: its tokens, finding spans with their status, the labeller's cues, context words.

The scanner is the CheXpert-style labeller's engine (`data_pipeline.reports.chexpert_labeller`)
run with the reader's rules: its tokeniser (lower case, '-' as a space, crude singulars), its
longest-match phrase matcher, its cue matcher and its scope logic (pre cues reaching forward over
lists, post cues backward, scope terminators, pseudo-negations) are used as they are, through a
`ReportLabeller` built with no observations of its own and the reader's merged cues. Only the
phrases differ: findings at a finer grain (`report_rules.py`) and a third matcher for context
words (sides, regions, severity, change, relations, recommendations, technique).

`SentenceScan.statuses` follow the labeller's order of decision: uncertainty over negation ->
uncertain, negation -> absent, uncertainty -> uncertain, else present; a normal phrase ("the heart
size is normal") is absent for each finding it rules out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from data_pipeline.construct.report_facts import ABSENT, PRESENT, UNCERTAIN
from data_pipeline.construct.report_rules import NORMAL_PREFIX, ReaderRules
from data_pipeline.reports.chexpert_labeller import _GAP, _GAP_BLOCKERS, _TOKEN, ReportLabeller, _lemma, _overrun
from data_pipeline.reports.chexpert_labeller import _PhraseMatcher

__all__ = ["Span", "SentenceScan", "SentenceScanner", "tokenize"]

_DROPPED = frozenset(".!?\n")  # inside one sentence these mark abbreviations and list numbers, not ends


class _Matcher(_PhraseMatcher):
    """The labeller's phrase matcher with a direct comparison for phrases without a gap (same
    matches; its recursive walk is kept for gap phrases): the reader's phrase lists are long."""

    @staticmethod
    def _match_at(words: tuple[str, ...], tokens: list[str], start: int, blocked: frozenset[str]) -> int | None:
        if _GAP in words:
            return _PhraseMatcher._match_at(words, tokens, start, blocked)
        end = start + len(words)
        return end if tuple(tokens[start:end]) == words else None


@dataclasses.dataclass(frozen=True)
class Span:
    """Tokens [start, end) of a sentence and what they are (the labeller's span shape)."""

    start: int
    end: int
    kind: str


def tokenize(text: str) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """The labeller's tokens of `text` (its `labeller_tokens`, less '.', '!', '?' and newlines) with
    each token's character span in `text`."""
    folded = text.lower()
    if len(folded) != len(text):  # a character whose lower case is longer ('İ'): keep it as it is
        folded = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    tokens, offsets = [], []
    for match in _TOKEN.finditer(folded.replace("-", " ")):
        token = match.group()
        if token not in _DROPPED:
            tokens.append(_lemma(token) if token[0].isalnum() else token)
            offsets.append(match.span())
    return tuple(tokens), tuple(offsets)


@dataclasses.dataclass(frozen=True)
class SentenceScan:
    """A scanned sentence.

    spans: finding spans (kind: a finding name, or `NORMAL_PREFIX` + '|'-joined findings), in order;
    statuses: per span, present/absent/uncertain; cues: the labeller's cues outside finding spans;
    context: context spans (kind: '|'-joined "role=value" roles).
    """

    text: str
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    spans: tuple[Span, ...]
    statuses: tuple[str, ...]
    cues: tuple[Span, ...]
    context: tuple[Span, ...]

    def phrase(self, start: int, end: int) -> str:
        """The verbatim text of tokens [start, end)."""
        return self.text[self.offsets[start][0] : self.offsets[end - 1][1]]


class SentenceScanner:
    """Scans sentences with the reader's rules (see the module docstring)."""

    def __init__(self, rules: ReaderRules):
        self.rules = rules
        self.scope = ReportLabeller({"observations": {}, "ignore": []}, rules.cues)
        self._cues = _Matcher([entry for entries in self.scope._cue_matcher._by_first.values() for entry in entries])
        self._findings = _Matcher(list(rules.finding_phrases))
        self._context = _Matcher([(words, kind, 0) for words, kind in rules.context_phrases])

    def reached(self, scan: SentenceScan, spans: Sequence[Span], kinds: set[str]) -> set[int]:
        """Indices of `spans` reached by the sentence's cues of `kinds` (the labeller's scope rules)."""
        return self.scope._reached_by(list(scan.tokens), list(spans), list(scan.cues), kinds)

    def reach(self, scan: SentenceScan, cue: Span, forward: bool, cues: Sequence[Span]) -> set[int]:
        """Indices of `scan.spans` one cue reaches, forward (a pre cue) or backward (a post cue)."""
        reach = self.scope._reach_forward if forward else self.scope._reach_backward
        return reach(list(scan.tokens), list(scan.spans), list(cues), cue)

    def _statuses(self, tokens: list[str], spans: list[Span], cues: list[Span]) -> tuple[str, ...]:
        strong = self.scope._reached_by(tokens, spans, cues, {"uncertainty_over_negation"})
        negated = self.scope._reached_by(tokens, spans, cues, {"negation_pre", "negation_post"})
        uncertain = self.scope._reached_by(tokens, spans, cues, {"uncertainty_pre", "uncertainty_post"})
        return tuple(
            ABSENT if span.kind.startswith(NORMAL_PREFIX)
            else UNCERTAIN if i in strong else ABSENT if i in negated else UNCERTAIN if i in uncertain else PRESENT
            for i, span in enumerate(spans)
        )

    def scan(self, text: str) -> SentenceScan:
        """Scan one sentence (mirrors `ReportLabeller._sentence_mentions`, spans kept)."""
        tokens, offsets = tokenize(text)
        words = list(tokens)
        all_cues = self._cues.find(words)
        found = [s for s in self._findings.find(words, blocked=_GAP_BLOCKERS) if not _overrun(s, all_cues)]
        covered = {i for s in found for i in range(s.start, s.end)}
        spans = [Span(s.start, s.end, s.kind) for s in found if s.kind != "ignore"]
        cues = [Span(c.start, c.end, c.kind) for c in all_cues if not covered.intersection(range(c.start, c.end))]
        context = tuple(Span(s.start, s.end, s.kind) for s in self._context.find(words, blocked=_GAP_BLOCKERS))
        statuses = self._statuses(words, spans, cues)
        return SentenceScan(text, tokens, offsets, tuple(spans), statuses, tuple(cues), context)
