"""A radiology report's sections, found by their headers.

    split_sections("INDICATION: cough.  FINDINGS: No effusion.  IMPRESSION: Normal.", rules)
    -> [("indication", "cough.  "), ("findings", "No effusion.  "), ("impression", "Normal.")]

A header is one of the rules' spellings (`report_rules/context.json` "headers", any case) that
starts a line or follows a sentence end, and ends with a colon; in capitals it may instead stand
alone on its line ("IMPRESSION", MIMIC-CXR's "FINAL REPORT"). Lines of underscores (MIMIC-CXR's
separators, not its three-underscore de-identification blanks) are dropped.

Text under no header:
- a report without any header is all "findings";
- text before the first header is "examination" when written in capitals only (MIMIC-CXR's
  "CHEST (PA AND LAT)" preamble), otherwise "findings";
- the short sections (examination, indication, technique, comparison) end at their first blank
  line after some text: paragraphs after it, under no header, are "findings" (MIMIC-CXR reports
  whose findings follow the comparison without a header).
"""

from __future__ import annotations

import re

from data_pipeline.construct.report_rules import ReaderRules

__all__ = ["SHORT_SECTIONS", "split_sections", "header_pattern"]

SHORT_SECTIONS = ("examination", "indication", "technique", "comparison")
_SEPARATOR = re.compile(r"^[ \t]*[_=\-]{4,}[ \t]*$", re.MULTILINE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_START = "start"  # the kind of a report-start header ("FINAL REPORT"): what follows is under no header


def header_pattern(rules: ReaderRules) -> re.Pattern:
    """A regex finding candidate headers (groups: name, colon); `_is_header` checks case and place."""
    names = sorted(set(rules.headers) | set(rules.report_start), key=len, reverse=True)
    alternation = "|".join(re.escape(n).replace(r"\ ", r"[ \t]+") for n in names)
    return re.compile(
        rf"(?:^|(?<=[.!?]))[ \t]*(?P<name>{alternation})[ \t]*(?P<colon>:|$)", re.IGNORECASE | re.MULTILINE
    )


def _is_header(text: str, match: re.Match) -> bool:
    name = match.group("name")
    if match.group("colon") == ":":
        return name[0].isupper()
    line_start = text.rfind("\n", 0, match.start("name")) + 1
    return not text[line_start : match.start("name")].strip() and name.upper() == name


def _segments(text: str, rules: ReaderRules, pattern: re.Pattern) -> list[tuple[str | None, str]]:
    """(section or None for no header, text) in report order, headers removed."""
    segments: list[tuple[str | None, str]] = []
    current, start = None, 0
    for match in pattern.finditer(text):
        if not _is_header(text, match):
            continue
        segments.append((current, text[start : match.start("name")]))
        name = " ".join(match.group("name").upper().split())
        current = None if name in rules.report_start else rules.headers[name]
        start = match.end()
    segments.append((current, text[start:]))
    return [(section, body) for section, body in segments if body.strip()]


def _close_short(segments: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """A short section ends at its first blank line after some text; the rest is under no header."""
    closed: list[tuple[str | None, str]] = []
    for section, body in segments:
        if section in SHORT_SECTIONS:
            lead = len(body) - len(body.lstrip())
            blank = _BLANK_LINE.search(body, lead)
            if blank and body[blank.end() :].strip():
                closed += [(section, body[: blank.start()]), (None, body[blank.end() :])]
                continue
        closed.append((section, body))
    return closed


def _unheaded(segments: list[tuple[str | None, str]]) -> list[tuple[str, str]]:
    """Sections for the text under no header (see the module docstring)."""
    if all(section is None for section, _ in segments):
        return [("findings", body) for _, body in segments]
    named: list[tuple[str, str]] = []
    for i, (section, body) in enumerate(segments):
        if section is None:
            leading = all(s is None for s, _ in segments[:i])
            section = "examination" if leading and not any(c.islower() for c in body) else "findings"
        named.append((section, body))
    return named


def split_sections(text: str, rules: ReaderRules, pattern: re.Pattern | None = None) -> list[tuple[str, str]]:
    """(canonical section, verbatim text) of each section in report order; a section may come more
    than once (two "IMPRESSION:" headers, findings around a short section). `pattern` is
    `header_pattern(rules)`, passed in to build it once."""
    text = _SEPARATOR.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    segments = _segments(text, rules, pattern or header_pattern(rules))
    return _unheaded(_close_short(segments))
