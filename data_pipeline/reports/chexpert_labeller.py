"""A rule-based, CheXpert-style report labeller (mention extraction + negation/uncertainty).

In the manner of the CheXpert labeller (Irvin et al., 2019), a report is
split into sentences; observation phrases are found in each sentence (the
14 CheXpert observations); each mention is classified as negative, uncertain
or positive from the cue phrases around it; and mentions are aggregated per
observation: positive if any mention is positive, else uncertain if any is
uncertain, else negative if any is negative, else blank. "No Finding" is
positive when no observation other than Support Devices is positive or
uncertain, else blank (CheXpert's convention).

The rules (phrases, cues, windows) live in readable JSON files in
`labeller_rules/`; their `about` entries document the phrase syntax and the
scope rules. This is a re-implementation of the approach with its own rule
lists, not the CheXpert labeller itself (which relies on a dependency parser
and NegBio patterns); expect close but not identical labels. Its reference
sentences (`tests/data/labeller_sentences.json`, sourced to the published
CheXpert/NegBio patterns or our own phrasing) are checked by
`tests/test_labeller_agreement.py`; `labeller_agreement` prints the
per-observation agreement.

Label values follow CheXpert: 1 positive, 0 negative, -1 uncertain, None blank.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "COMMON_FIVE",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "RULES_DIR",
    "Mention",
    "ReportLabels",
    "ReportLabeller",
    "default_labeller",
    "labeller_tokens",
]

CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# The five observations most clinical-efficacy comparisons single out.
COMMON_FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
_STATUS_VALUE = {"positive": POSITIVE, "negative": NEGATIVE, "uncertain": UNCERTAIN}
RULES_DIR = Path(__file__).with_name("labeller_rules")
_GAP = "..."
_MAX_GAP = 3
# Words a `...` gap never spans: "heart is not enlarged" must not match "heart ... enlarged".
_GAP_BLOCKERS = frozenset({"no", "not", "without", "but", "however", "although"})
_PUNCT = frozenset(".,;:!?")
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|[.,;:!?\n]")
_CUE_KINDS = (
    "uncertainty_over_negation",
    "negation_pre",
    "negation_post",
    "uncertainty_pre",
    "uncertainty_post",
    "pseudo_negation",
    "scope_terminators",
    "negation_carriers",
)


def _lemma(word: str) -> str:
    """A crude singular form so that plural and singular phrases match each other."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ys")):
        return word[:-1]
    return word


def labeller_tokens(text: str) -> list[str]:
    """Lowercased, singularised word tokens and punctuation tokens ("\\n" kept as a sentence break)."""
    return [_lemma(t) if t[0].isalnum() else t for t in _TOKEN.findall(text.lower().replace("-", " "))]


def _sentences(tokens: list[str]) -> list[list[str]]:
    sentences, current = [], []
    for token in tokens:
        if token in (".", "!", "?", "\n"):
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(token)
    if current:
        sentences.append(current)
    return sentences


def _phrase(text: str) -> tuple[str, ...]:
    words: list[str] = []
    for part in text.replace(_GAP, f" {_GAP} ").split():
        words += [_GAP] if part == _GAP else labeller_tokens(part)
    return tuple(words)


@dataclasses.dataclass(frozen=True)
class _Span:
    start: int  # token index in the sentence, inclusive
    end: int  # exclusive
    kind: str  # observation name, a cue kind, "normal:<observation>" or "ignore"


class _PhraseMatcher:
    """Longest-match phrase finder over token lists; phrases may hold `...` gaps."""

    def __init__(self, phrases: Sequence[tuple[tuple[str, ...], str, int]]):
        # phrase words, kind, priority (higher wins on equal length)
        self._by_first: dict[str, list[tuple[tuple[str, ...], str, int]]] = {}
        for words, kind, priority in phrases:
            if not words or words[0] == _GAP or words[-1] == _GAP:
                raise ValueError(f"labeller phrase {' '.join(words)!r} ({kind}) is empty or starts/ends with '...'")
            self._by_first.setdefault(words[0], []).append((words, kind, priority))

    @staticmethod
    def _match_at(words: tuple[str, ...], tokens: list[str], start: int, blocked: frozenset[str]) -> int | None:
        """End index of `words` matched at `start` (shortest gaps first), or None."""

        def walk(wi: int, ti: int) -> int | None:
            if wi == len(words):
                return ti
            if words[wi] == _GAP:
                for skip in range(_MAX_GAP + 1):
                    gap = tokens[ti : ti + skip]
                    if len(gap) < skip or any(t in _PUNCT or t in blocked for t in gap):
                        break
                    end = walk(wi + 1, ti + skip)
                    if end is not None:
                        return end
                return None
            if ti < len(tokens) and tokens[ti] == words[wi]:
                return walk(wi + 1, ti + 1)
            return None

        return walk(0, start)

    def find(self, tokens: list[str], blocked: frozenset[str] = frozenset()) -> list[_Span]:
        spans, i = [], 0
        while i < len(tokens):
            best: tuple[int, int, str] | None = None
            for words, kind, priority in self._by_first.get(tokens[i], ()):
                end = self._match_at(words, tokens, i, blocked)
                if end is not None and (best is None or (end, priority) > best[:2]):
                    best = (end, priority, kind)
            if best is None:
                i += 1
            else:
                spans.append(_Span(i, best[0], best[2]))
                i = best[0]
        return spans


def _overrun(span: _Span, cues: list[_Span]) -> bool:
    """Whether a cue starts inside the normal phrase `span` and runs past its end.

    Such a cue wins: "the lungs are clear of effusion" holds the cue "clear of", not the
    normal phrase "lungs ... clear" (which would say nothing about effusion and hide the cue).
    """
    return span.kind.startswith("normal:") and any(span.start < c.start < span.end < c.end for c in cues)


@dataclasses.dataclass(frozen=True)
class Mention:
    """One observation mention: where it is, what it says and how it was classified."""

    observation: str
    text: str
    sentence: int
    status: str  # "positive" | "negative" | "uncertain"
    laterality: str | None  # "left" | "right" | "bilateral" | None
    normal: bool = False  # a `normal` phrase ("heart size is normal"): negative by itself, no cue needed


@dataclasses.dataclass(frozen=True)
class ReportLabels:
    """Per-observation labels (1/0/-1/None, CheXpert encoding) and the mentions behind them."""

    labels: Mapping[str, int | None]
    mentions: tuple[Mention, ...]

    def positive_vector(self, uncertain_as_positive: bool = True) -> np.ndarray:
        """bool[14] in CHEXPERT_OBSERVATIONS order: positive (and, if asked, uncertain) labels."""
        accepted = (POSITIVE, UNCERTAIN) if uncertain_as_positive else (POSITIVE,)
        return np.array([self.labels[o] in accepted for o in CHEXPERT_OBSERVATIONS], dtype=bool)


@dataclasses.dataclass(frozen=True)
class _Cues:
    pre_window: int
    post_window: int
    list_gap: int
    clause_verbs: frozenset[str]
    laterality: Mapping[str, tuple[tuple[str, ...], ...]]


class ReportLabeller:
    """Labels free-text reports with the 14 CheXpert observations; see the module docstring."""

    def __init__(self, observations: Mapping, cues: Mapping):
        self._observation_matcher, self._cue_matcher = self._build_matchers(observations, cues)
        self._cues = _Cues(
            pre_window=int(cues["pre_window"]),
            post_window=int(cues["post_window"]),
            list_gap=int(cues["list_gap"]),
            clause_verbs=frozenset(_lemma(v) for v in cues["clause_verbs"]),
            laterality={side: tuple(_phrase(p) for p in phrases) for side, phrases in cues["laterality"].items()},
        )

    @classmethod
    def from_rules_dir(cls, rules_dir: str | Path = RULES_DIR) -> "ReportLabeller":
        rules_dir = Path(rules_dir)
        loaded = []
        for name in ("observations.json", "cues.json"):
            path = rules_dir / name
            try:
                loaded.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"cannot read labeller rules {path}: {err}") from None
        return cls(*loaded)

    @staticmethod
    def _build_matchers(observations: Mapping, cues: Mapping) -> tuple[_PhraseMatcher, _PhraseMatcher]:
        unknown = set(observations["observations"]) - set(CHEXPERT_OBSERVATIONS)
        if unknown:
            raise ValueError(f"labeller rules name unknown observation(s): {sorted(unknown)}")
        phrases = []
        for observation, rules in observations["observations"].items():
            phrases += [(_phrase(p), observation, 0) for p in rules["mentions"]]
            phrases += [(_phrase(p), f"normal:{observation}", 1) for p in rules["normal"]]
        phrases += [(_phrase(p), "ignore", 2) for p in observations["ignore"]]
        roles: dict[tuple[str, ...], list[str]] = {}
        for kind in _CUE_KINDS:
            for text in cues[kind]:
                roles.setdefault(_phrase(text), []).append(kind)
        for words, kinds in roles.items():
            # A phrase may be a pre and a post cue of one family (and a negation carrier), nothing else.
            families = {k.rsplit("_", 1)[0] if k.endswith(("_pre", "_post")) else k for k in kinds}
            if len(families - {"negation_carriers"}) > 1:
                raise ValueError(f"cue {' '.join(words)!r} is listed as {' and '.join(kinds)}")
        cue_phrases = [(words, "+".join(kinds), 0) for words, kinds in roles.items()]
        return _PhraseMatcher(phrases), _PhraseMatcher(cue_phrases)

    # -- classification -------------------------------------------------------------------------

    def _breaks_list(self, tokens: list[str], gap: tuple[int, int], cues: list[_Span]) -> bool:
        """Whether the words in [gap) stop a cue from reaching across them."""
        start, end = gap
        if end - start > self._cues.list_gap:
            return True
        if self._breaks_scope(gap, cues):
            return True
        has_verb = any(t in self._cues.clause_verbs for t in tokens[start:end])
        carried = any("negation_carriers" in c.kind.split("+") and start <= c.start and c.end <= end for c in cues)
        return has_verb and not carried

    def _has_clause_verb(self, tokens: list[str], span: _Span) -> bool:
        return any(t in self._cues.clause_verbs for t in tokens[span.start : span.end])

    def _reached_by(self, tokens: list[str], mentions: list[_Span], cues: list[_Span], kinds: set[str]) -> set[int]:
        """Indices of `mentions` reached by any cue of `kinds` (pre cues forward, post cues backward)."""
        reached: set[int] = set()
        for cue in cues:
            roles = set(cue.kind.split("+")) & kinds
            if roles & {"negation_pre", "uncertainty_pre", "uncertainty_over_negation"}:
                reached |= self._reach_forward(tokens, mentions, cues, cue)
            if roles & {"negation_post", "uncertainty_post", "uncertainty_over_negation"}:
                reached |= self._reach_backward(tokens, mentions, cues, cue)
        return reached

    def _reach_forward(self, tokens, mentions, cues, cue) -> set[int]:
        after = [i for i, m in enumerate(mentions) if m.start >= cue.end]
        if not after:
            return set()
        first = after[0]
        gap = (cue.end, mentions[first].start)
        if gap[1] - gap[0] > self._cues.pre_window or self._breaks_scope(gap, cues):
            return set()
        reached = {first}
        for previous, current in zip(after, after[1:]):
            if self._has_clause_verb(tokens, mentions[current]) or self._breaks_list(
                tokens, (mentions[previous].end, mentions[current].start), cues
            ):
                break
            reached.add(current)
        return reached

    def _reach_backward(self, tokens, mentions, cues, cue) -> set[int]:
        before = [i for i, m in enumerate(mentions) if m.end <= cue.start]
        if not before:
            return set()
        last = before[-1]
        gap = (mentions[last].end, cue.start)
        if gap[1] - gap[0] > self._cues.post_window or self._breaks_scope(gap, cues):
            return set()
        reached = {last}
        for current, previous in zip(reversed(before), list(reversed(before))[1:]):
            if self._breaks_list(tokens, (mentions[previous].end, mentions[current].start), cues):
                break
            reached.add(previous)
        return reached

    @staticmethod
    def _breaks_scope(gap: tuple[int, int], cues: list[_Span]) -> bool:
        """Whether a scope terminator or a pseudo-negation lies inside the words [gap)."""
        start, end = gap
        return any(
            c.kind in ("scope_terminators", "pseudo_negation") and start <= c.start and c.end <= end for c in cues
        )

    def _laterality(self, tokens: list[str], span: _Span) -> str | None:
        window_start = span.start
        while window_start > 0 and span.start - window_start < 3 and tokens[window_start - 1] not in _PUNCT:
            window_start -= 1
        region = tokens[window_start : span.end + 4]
        present = set(region)
        sides = set()
        for side, phrases in self._cues.laterality.items():
            for words in phrases:
                if words[0] not in present:
                    continue
                n = len(words)
                if any(tuple(region[i : i + n]) == words for i in range(len(region) - n + 1)):
                    sides.add(side)
        if "bilateral" in sides or {"left", "right"} <= sides:
            return "bilateral"
        return next(iter(sides), None)

    def _sentence_mentions(self, tokens: list[str], index: int) -> list[Mention]:
        all_cues = self._cue_matcher.find(tokens)
        found = [s for s in self._observation_matcher.find(tokens, blocked=_GAP_BLOCKERS) if not _overrun(s, all_cues)]
        covered = {i for s in found for i in range(s.start, s.end)}
        spans = [s for s in found if s.kind != "ignore"]
        cues = [c for c in all_cues if not covered & set(range(c.start, c.end))]
        strong = self._reached_by(tokens, spans, cues, {"uncertainty_over_negation"})
        negated = self._reached_by(tokens, spans, cues, {"negation_pre", "negation_post"})
        uncertain = self._reached_by(tokens, spans, cues, {"uncertainty_pre", "uncertainty_post"})
        mentions = []
        for i, span in enumerate(spans):
            if span.kind.startswith("normal:"):
                observation, status = span.kind.split(":", 1)[1], "negative"
            else:
                observation = span.kind
                status = (
                    "uncertain" if i in strong else "negative" if i in negated else "uncertain" if i in uncertain
                    else "positive"
                )
            text = " ".join(tokens[span.start : span.end])
            mentions.append(Mention(observation, text, index, status, self._laterality(tokens, span),
                                    normal=span.kind.startswith("normal:")))
        return mentions

    def label(self, report: str) -> ReportLabels:
        """Labels of one report (any text; empty text gives blank labels and No Finding positive)."""
        mentions: list[Mention] = []
        for index, sentence in enumerate(_sentences(labeller_tokens(report))):
            mentions += self._sentence_mentions(sentence, index)
        labels: dict[str, int | None] = {o: None for o in CHEXPERT_OBSERVATIONS}
        for observation in CHEXPERT_OBSERVATIONS[1:]:
            values = {_STATUS_VALUE[m.status] for m in mentions if m.observation == observation}
            for value in (POSITIVE, UNCERTAIN, NEGATIVE):
                if value in values:
                    labels[observation] = value
                    break
        findings = [o for o in CHEXPERT_OBSERVATIONS[1:] if o != "Support Devices"]
        if not any(labels[o] in (POSITIVE, UNCERTAIN) for o in findings):
            labels["No Finding"] = POSITIVE
        return ReportLabels(labels=labels, mentions=tuple(mentions))


@functools.lru_cache(maxsize=1)
def default_labeller() -> ReportLabeller:
    """The labeller built from the rules shipped in `labeller_rules/` (cached)."""
    return ReportLabeller.from_rules_dir(RULES_DIR)
