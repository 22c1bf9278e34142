"""The options a closed-ended question lists inside its text, in the layouts CXRTrek files use.

    "... Select the correct answer from choices below: A. Posterio-anterior. or B. Antero-posterior. ..."
    "... Mark the most appropriate response: [ A. No. or B. Yes. ]. ..."
    "... Identify the correct choice: [ 1. Pulmonary parenchyma; 2. Left pleural space. or 3. Mediastinal space. ]."
    "... Identify the correct choice: [ No. or Yes. ]."              (unlabelled, bracketed)
    "... Mark the most appropriate response: Yes. or No."            (unlabelled)
    "Which view is this?\\nA) PA\\nB) AP\\nC) Lateral"                  (one per line)
    "Which view is this? Options: A. PA B. AP Current X-ray: <image> ."  (an image introduction after)

Labelled options (A./B./... or 1./2./..., also "A)" and "(A)") are preferred; otherwise the last
bracketed list "[ x or y ]", else the last unbracketed one after a colon ("...: Yes. or No."). The last labelled option ends at a closing bracket, a line break, a closing
quote, a sentence end followed by a capital, or an image placeholder, whichever comes first; before a
placeholder, the image's introduction ("Current X-ray:", "The previous study is shown here:") is not part
of the option: it starts at the first capitalised word of `INTRODUCTION_HEADS` from which only words run
to the colon before the placeholder. Both the evaluation's answer parser
(`cxrtrek_jax.evaluation.metrics.answer_parsing`) and the image labels (`image_labels`) read options here.
"""

from __future__ import annotations

import dataclasses
import re

from data_pipeline.schema.records import IMAGE_PLACEHOLDER

__all__ = ["ChoiceOption", "parse_options", "OPTION_KEY", "OPTION_MARKER", "INTRODUCTION_HEADS"]

OPTION_KEY = r"[A-Z]|[1-9][0-9]?"
# An option marker: "A." "A)" "(A)" "2." not glued to a preceding word or dot.
OPTION_MARKER = re.compile(rf"(?<![\w.(])(?:\(({OPTION_KEY})\)|({OPTION_KEY})[.)])(?=\s|$)")
# The first words of the image introductions that follow a question in the phantom's and the authors'
# layouts ("Current X-ray: <image> .", "The reference X-ray image of the patient is shown below: <image> .").
INTRODUCTION_HEADS = ("Current", "Reference", "Prior", "Previous", "Later", "Follow-up", "Here", "This", "The",
                      "These", "Image", "Images")
_LAST_OPTION_END = re.compile(r"\]|\n|'(?=[\s,.;:]|$)|(?<=[.?!])\s+(?=[A-Z])")
_INTRODUCTION = re.compile(rf"\s+(?:{'|'.join(INTRODUCTION_HEADS)})\b[^.?!:<\n]*:\s*$")
# "...: Yes. or No." / "...: A x.; B y. or C z." without brackets: sentence-like parts, each ending in
# a period, joined by "or" or ";", right after a colon.
_UNBRACKETED = re.compile(r":\s*((?:[^:?.;\[\]']{1,60}?\.\s*(?:;|\bor\b)\s*)+[^:?.;\[\]']{1,60}?\.)(?=\s|'|$)")
_BRACKETED = re.compile(r"\[\s*([^\[\]]+?)\s*\]")
_UNLABELLED_SPLIT = re.compile(r"\s+or\s+|\s*;\s*")
_TRAILING_SEPARATOR = re.compile(r"(?:\s*(?:[;,]|\bor\b|\band\b))+\s*$")


@dataclasses.dataclass(frozen=True)
class ChoiceOption:
    """One listed option: its key ("A", "2"; None when unlabelled) and its text."""

    key: str | None
    text: str


def _clean_option_text(text: str) -> str:
    return _TRAILING_SEPARATOR.sub("", text.strip()).strip()


def _marker_key(marker: re.Match) -> str:
    return marker.group(1) or marker.group(2)


def _next_key(key: str) -> str:
    return str(int(key) + 1) if key.isdigit() else chr(ord(key) + 1)


def _marker_runs(question: str) -> list[list[re.Match]]:
    """Runs of markers whose keys count up from A (or 1), each after the previous."""
    markers = list(OPTION_MARKER.finditer(question))
    runs = []
    for i, first in enumerate(markers):
        key = _marker_key(first)
        if key not in ("A", "1"):
            continue
        run = [first]
        expected = _next_key(key)
        for later in markers[i + 1 :]:
            if _marker_key(later) == expected:
                run.append(later)
                expected = _next_key(expected)
        if len(run) >= 2:
            runs.append(run)
    return runs


def _last_option_text(rest: str) -> str:
    """The last option's text from what follows its marker (module docstring)."""
    end = _LAST_OPTION_END.search(rest)
    text = rest[: end.start()] if end else rest
    placeholder = text.find(IMAGE_PLACEHOLDER)
    if placeholder >= 0:
        before = text[:placeholder]
        introduction = _INTRODUCTION.search(before)
        text = before[: introduction.start()] if introduction else before
    return text


def _labelled_options(question: str) -> tuple[ChoiceOption, ...]:
    runs = _marker_runs(question)
    if not runs:
        return ()
    # The longest run wins; among equals, the last one (options close the question).
    run = max(reversed(runs), key=len)
    options = []
    for marker, following in zip(run, run[1:] + [None]):
        if following is not None:
            text = question[marker.end() : following.start()]
        else:
            text = _last_option_text(question[marker.end() :].lstrip())
        options.append(ChoiceOption(_marker_key(marker), _clean_option_text(text)))
    return tuple(options)


def _unlabelled_options(question: str) -> tuple[ChoiceOption, ...]:
    for match in [*reversed(list(_BRACKETED.finditer(question))), *reversed(list(_UNBRACKETED.finditer(question)))]:
        parts = [_clean_option_text(p) for p in _UNLABELLED_SPLIT.split(match.group(1))]
        parts = [p for p in parts if p]
        if len(parts) >= 2:
            return tuple(ChoiceOption(None, p) for p in parts)
    return ()


def parse_options(question: str) -> tuple[ChoiceOption, ...]:
    """The options listed in a question, in order; () when none are found (module docstring)."""
    return _labelled_options(question) or _unlabelled_options(question)
