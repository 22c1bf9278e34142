"""The report reader's rules: the CheXpert-style labeller's rules, extended by `report_rules/*.json`.

`findings.json` gives finer-grained findings (each tied to its CheXpert observation, or to none),
claims the labeller's phrases for them, adds normal phrases, ignore phrases and cues;
`context.json` gives section headers, sentence abbreviations, side/region/severity words, change
words, relation and recommendation phrases, and technique phrases. The labeller's own rule files
(`data_pipeline/reports/labeller_rules/`) are read as they are and never changed, so the labeller's
behaviour stays its own. Every rule error is a ValueError naming the file and the entry.

Compiled rules (`ReaderRules`) hold phrase lists in the labeller's phrase form (tuples of
tokens, `...` for a gap) ready for its phrase matcher.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_pipeline.construct.report_facts import CATEGORIES, CHANGES, RELATION_KINDS
from data_pipeline.reports.chexpert_labeller import _CUE_KINDS, CHEXPERT_OBSERVATIONS, RULES_DIR as LABELLER_RULES_DIR
from data_pipeline.reports.chexpert_labeller import _phrase

__all__ = ["RULES_DIR", "FindingKind", "ReaderRules", "load_reader_rules", "default_rules", "NORMAL_PREFIX"]

RULES_DIR = Path(__file__).with_name("report_rules")
NORMAL_PREFIX = "normal:"  # the labeller's kind prefix of a normal phrase; the rest names the findings, '|'-joined
_OBSERVATIONS = CHEXPERT_OBSERVATIONS[1:]  # "No Finding" has no phrases
Words = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FindingKind:
    """A finding the reader names: its category and the CheXpert observation it counts for (or None)."""

    name: str
    category: str
    chexpert: str | None


@dataclasses.dataclass(frozen=True)
class ReaderRules:
    """Compiled rules.

    finding_phrases: (words, kind, priority) for the labeller's phrase matcher; kind is a finding
        name, `NORMAL_PREFIX` + '|'-joined findings, or "ignore"; priority 0 mention, 1 normal, 2 ignore.
    cues: the labeller's cues.json with the reader's cues added (same keys).
    context_phrases: (words, roles) with roles '|'-joined "role=value" strings (see `context.json`).
    headers: header spelling (upper case, single spaces) -> canonical section; report_start: spellings
        that start the final report.
    """

    findings: Mapping[str, FindingKind]
    finding_phrases: tuple[tuple[Words, str, int], ...]
    cues: Mapping[str, Any]
    context_phrases: tuple[tuple[Words, str], ...]
    headers: Mapping[str, str]
    report_start: tuple[str, ...]
    never_end: frozenset[str]
    end_before_capital: frozenset[str]
    size_units: frozenset[str]
    window_before: int
    window_after: int
    window_stops: frozenset[str]
    comparison_words: frozenset[str]


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read report reader rules {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"report reader rules {path}: expected a JSON object")
    return loaded


def _field(rules: Mapping, key: str, origin: str) -> Any:
    if key not in rules:
        raise ValueError(f"{origin}: missing field {key!r}")
    return rules[key]


def _finding_kinds(rules: Mapping, origin: str) -> dict[str, FindingKind]:
    kinds = {}
    for name, entry in _field(rules, "findings", origin).items():
        where = f"{origin}: findings[{name!r}]"
        category, chexpert = _field(entry, "category", where), _field(entry, "chexpert", where)
        if name != name.lower() or not name.strip():
            raise ValueError(f"{where}: a finding name is lower case and not empty")
        if category not in CATEGORIES:
            raise ValueError(f"{where}: category {category!r} is not one of {CATEGORIES}")
        if chexpert is not None and chexpert not in _OBSERVATIONS:
            raise ValueError(f"{where}: chexpert {chexpert!r} is not a labeller observation (or null)")
        kinds[name] = FindingKind(name, category, chexpert)
    return kinds


def _inherited(rules: Mapping, kinds: Mapping[str, FindingKind], origin: str) -> dict[str, str]:
    inherit = _field(rules, "inherit", origin)
    if set(inherit) != set(_OBSERVATIONS):
        raise ValueError(f"{origin}: inherit must name a finding for each of {_OBSERVATIONS}")
    for observation, name in inherit.items():
        if name not in kinds or kinds[name].chexpert != observation:
            raise ValueError(f"{origin}: inherit[{observation!r}] = {name!r} is not a finding of that observation")
    return inherit


def _claims(rules: Mapping, kinds: Mapping[str, FindingKind], origin: str) -> dict[Words, str]:
    """Phrase words -> the finding that claims them (each phrase claimed once)."""
    claims: dict[Words, str] = {}
    for name, entry in rules["findings"].items():
        for text in _field(entry, "mentions", f"{origin}: findings[{name!r}]"):
            words = _phrase(text)
            if words in claims and claims[words] != name:
                raise ValueError(f"{origin}: phrase {text!r} is claimed by {claims[words]!r} and {name!r}")
            claims[words] = name
    return claims


def _normal_claims(rules: Mapping, kinds: Mapping[str, FindingKind], origin: str) -> dict[Words, str]:
    """Normal phrase words -> their kind (`NORMAL_PREFIX` + the findings they rule out)."""
    claims: dict[Words, str] = {}
    for i, group in enumerate(_field(rules, "normals", origin)):
        where = f"{origin}: normals[{i}]"
        names = _field(group, "findings", where)
        unknown = [n for n in names if n not in kinds]
        if not names or unknown:
            raise ValueError(f"{where}: findings must name known findings (unknown: {unknown})")
        for text in _field(group, "phrases", where):
            words = _phrase(text)
            if words in claims:
                raise ValueError(f"{where}: normal phrase {text!r} is listed twice")
            claims[words] = NORMAL_PREFIX + "|".join(names)
    return claims


def _finding_phrases(labeller: Mapping, rules: Mapping, kinds: Mapping[str, FindingKind], origin: str):
    """The matcher's phrase list: the labeller's phrases in its order (claimed or inherited), then the rest."""
    inherit, claims = _inherited(rules, kinds, origin), _claims(rules, kinds, origin)
    normals = _normal_claims(rules, kinds, origin)
    phrases: list[tuple[Words, str, int]] = []
    for observation, entry in labeller["observations"].items():
        for text in entry["mentions"]:
            words = _phrase(text)
            name = claims.get(words, inherit[observation])
            if kinds[name].chexpert != observation:
                raise ValueError(f"{origin}: {name!r} claims the labeller's {observation} phrase {text!r}")
            phrases.append((words, name, 0))
        for text in entry["normal"]:
            words = _phrase(text)
            kind = normals.get(words, NORMAL_PREFIX + inherit[observation])
            if inherit[observation] not in kind[len(NORMAL_PREFIX):].split("|"):
                raise ValueError(f"{origin}: normal phrase {text!r} must keep {inherit[observation]!r}")
            phrases.append((words, kind, 1))
    listed = {words for words, _, _ in phrases}
    phrases += [(w, name, 0) for w, name in claims.items() if w not in listed]
    phrases += [(w, kind, 1) for w, kind in normals.items() if w not in listed]
    ignored = [_phrase(p) for p in labeller["ignore"] + list(_field(rules, "ignore", origin))]
    phrases += [(w, "ignore", 2) for w in dict.fromkeys(ignored) if w not in claims]
    return tuple(phrases)


def _merged_cues(labeller_cues: Mapping, rules: Mapping, origin: str) -> dict[str, Any]:
    cues = dict(labeller_cues)
    for kind, phrases in _field(rules, "cues", origin).items():
        if kind not in _CUE_KINDS:
            raise ValueError(f"{origin}: cues[{kind!r}] is not a labeller cue kind {_CUE_KINDS}")
        cues[kind] = list(dict.fromkeys(list(labeller_cues[kind]) + list(phrases)))
    return cues


def _role_phrases(table: Mapping[str, list], role: str, origin: str, allowed=None) -> list[tuple[str, str]]:
    """(phrase, "role=value") for a {value: [phrases]} table."""
    if allowed is not None and set(table) - set(allowed):
        raise ValueError(f"{origin}: unknown {role} value(s) {sorted(set(table) - set(allowed))} (known: {allowed})")
    return [(text, f"{role}={value}") for value, phrases in table.items() for text in phrases]


def _change_phrases(changes: Mapping, origin: str) -> list[tuple[str, str]]:
    pairs = [(text, "change_none=") for text in _field(changes, "none", origin)]
    for value, directions in changes.items():
        if value == "none":
            continue
        if value not in CHANGES:
            raise ValueError(f"{origin}: changes[{value!r}] is not one of {CHANGES}")
        for direction in ("pre", "post"):
            pairs += [(text, f"change_{direction}={value}") for text in _field(directions, direction, origin)]
    return pairs


def _technique_phrases(technique: Mapping, origin: str) -> list[tuple[str, str]]:
    pairs = _role_phrases(_field(technique, "view", origin), "view", origin, ("PA", "AP", "LATERAL"))
    for flag in ("portable", "supine", "rotation", "exclusion"):
        pairs += [(text, f"{flag}=") for text in _field(technique, flag, origin)]
    pairs += _role_phrases(_field(technique, "inspiration", origin), "inspiration", origin, ("low", "adequate"))
    pairs += _role_phrases(_field(technique, "anatomy", origin), "anatomy", origin)
    return pairs


def _context_phrases(context: Mapping, laterality: Mapping, origin: str) -> tuple[tuple[Words, str], ...]:
    """Every context phrase with all its roles, '|'-joined (a phrase may have several: 'base' is a
    region and an anatomy part)."""
    pairs = _role_phrases(laterality, "side", origin, ("left", "right", "bilateral"))
    for text, (side, region) in _field(context, "sided_regions", origin).items():
        pairs += [(text, f"side={side}"), (text, f"region={region}")]
    pairs += _role_phrases(_field(context, "regions", origin), "region", origin)
    pairs += _role_phrases(_field(context, "severity", origin), "severity", origin)
    pairs += _change_phrases(_field(context, "changes", origin), origin)
    pairs += _role_phrases(_field(context, "relations", origin), "relation", origin, RELATION_KINDS)
    pairs += [(text, "recommend=") for text in _field(context, "recommendation", origin)]
    pairs += [(text, "hypothetical=") for text in _field(context, "hypothetical", origin)]
    pairs += _technique_phrases(_field(context, "technique", origin), origin)
    roles: dict[Words, list[str]] = {}
    for text, role in pairs:
        words = _phrase(text)
        if not words or words[0] == "..." or words[-1] == "...":
            raise ValueError(f"{origin}: phrase {text!r} ({role}) is empty or starts/ends with '...'")
        roles.setdefault(words, [])
        if role not in roles[words]:
            roles[words].append(role)
    return tuple((words, "|".join(sorted(r))) for words, r in roles.items())


def _headers(context: Mapping, origin: str) -> dict[str, str]:
    from data_pipeline.construct.report_facts import SECTIONS

    headers: dict[str, str] = {}
    for section, spellings in _field(context, "headers", origin).items():
        if section not in SECTIONS:
            raise ValueError(f"{origin}: headers[{section!r}] is not a section {SECTIONS}")
        for spelling in spellings:
            key = " ".join(spelling.upper().split())
            if headers.get(key, section) != section:
                raise ValueError(f"{origin}: header {spelling!r} names {headers[key]!r} and {section!r}")
            headers[key] = section
    return headers


def load_reader_rules(rules_dir: str | Path = RULES_DIR, labeller_dir: str | Path = LABELLER_RULES_DIR) -> ReaderRules:
    """Compile the reader's rules (`findings.json`, `context.json` in `rules_dir`) over the labeller's."""
    rules_dir, labeller_dir = Path(rules_dir), Path(labeller_dir)
    labeller = _read_json(labeller_dir / "observations.json")
    labeller_cues = _read_json(labeller_dir / "cues.json")
    findings_path, context_path = rules_dir / "findings.json", rules_dir / "context.json"
    findings, context = _read_json(findings_path), _read_json(context_path)
    kinds = _finding_kinds(findings, str(findings_path))
    origin = str(context_path)
    abbreviations, window = _field(context, "abbreviations", origin), _field(context, "modifier_window", origin)
    return ReaderRules(
        findings=kinds,
        finding_phrases=_finding_phrases(labeller, findings, kinds, str(findings_path)),
        cues=_merged_cues(labeller_cues, findings, str(findings_path)),
        context_phrases=_context_phrases(context, labeller_cues["laterality"], origin),
        headers=_headers(context, origin),
        report_start=tuple(" ".join(s.upper().split()) for s in _field(context, "report_start", origin)),
        never_end=frozenset(_field(abbreviations, "never_end", origin)),
        end_before_capital=frozenset(_field(abbreviations, "end_before_capital", origin)),
        size_units=frozenset(_field(context, "size_units", origin)),
        window_before=int(_field(window, "before", origin)),
        window_after=int(_field(window, "after", origin)),
        window_stops=frozenset(_field(window, "stops", origin)),
        comparison_words=frozenset(_field(_field(context, "technique", origin), "comparison_words", origin)),
    )


@functools.lru_cache(maxsize=1)
def default_rules() -> ReaderRules:
    """The rules shipped in `report_rules/` over the labeller's shipped rules (cached)."""
    return load_reader_rules()
