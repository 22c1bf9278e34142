"""Parsing closed-ended answers (yes/no, single- and multi-choice) to comparable values.

CXRTrek lists the options inside the question text, in a few styles:

    "... Select the correct answer from choices below: A. Posterio-anterior. or B. Antero-posterior. ..."
    "... Mark the most appropriate response: [ A. No. or B. Yes. ]. ..."
    "... Identify the correct choice: [ 1. Pulmonary parenchyma; 2. Left pleural space. or 3. Mediastinal space. ]."
    "... Identify the correct choice: [ No. or Yes. ]."              (unlabelled, bracketed)
    "Which view is this?\\nA) PA\\nB) AP\\nC) Lateral"                  (one per line)

and answers name an option by its key ("B", "B.", "(B)", "2."), by its text
("Antero-posterior."), by a paraphrase of its text, or, for yes/no
questions, by a leading yes/no word ("Yes. There is ..."). `parse_options`
recovers the options; `parse_closed_answer` maps an answer to a canonical
value: a frozenset of option indices ("opt:0", "opt:1", ...) when the
question lists options, else {"yes"} / {"no"}, else the option key the
answer starts with ("key:B"). None means the answer could not be parsed.
"""

from __future__ import annotations

import dataclasses
import re

from data_pipeline.schema.stages import QType

__all__ = [
    "ChoiceOption",
    "ParsedAnswer",
    "parse_options",
    "parse_yes_no",
    "parse_closed_answer",
    "ClosedJudgement",
    "judge_closed_answer",
    "FUZZY_MIN_F1",
    "FUZZY_MIN_MARGIN",
]

# A paraphrased answer is matched to the option with the highest token F1 when
# that F1 is at least FUZZY_MIN_F1 and beats the runner-up by FUZZY_MIN_MARGIN.
FUZZY_MIN_F1 = 0.5
FUZZY_MIN_MARGIN = 0.1

_KEY = r"[A-Z]|[1-9][0-9]?"
# An option marker: "A." "A)" "(A)" "2." not glued to a preceding word or dot.
_MARKER = re.compile(rf"(?<![\w.(])(?:\(({_KEY})\)|({_KEY})[.)])(?=\s|$)")
_LAST_OPTION_END = re.compile(r"\]|\n|'(?=\s|$)|(?<=[.?!])\s+(?=[A-Z])")
_BRACKETED = re.compile(r"\[\s*([^\[\]]+?)\s*\]")
_UNLABELLED_SPLIT = re.compile(r"\s+or\s+|\s*;\s*")
_TRAILING_SEPARATOR = re.compile(r"(?:\s*(?:[;,]|\bor\b|\band\b))+\s*$")
_WORD = re.compile(r"[a-z0-9]+")
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*)", re.IGNORECASE
)
_YES = frozenset({"yes"})
_NO = frozenset({"no"})


@dataclasses.dataclass(frozen=True)
class ChoiceOption:
    """One listed option: its key ("A", "2"; None when unlabelled) and its text."""

    key: str | None
    text: str


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    """A parsed closed-ended answer.

    value: canonical labels ("opt:<index>", "yes"/"no" or "key:<K>"), None if unparseable.
    method: how it was parsed: "key", "text", "fuzzy", "yes_no" or "unparseable".
    """

    value: frozenset[str] | None
    method: str

    @property
    def ok(self) -> bool:
        return self.value is not None


_UNPARSEABLE = ParsedAnswer(None, "unparseable")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def _clean_option_text(text: str) -> str:
    return _TRAILING_SEPARATOR.sub("", text.strip()).strip()


def _marker_runs(question: str) -> list[list[re.Match]]:
    """Runs of markers whose keys count up from A (or 1), each after the previous."""
    markers = list(_MARKER.finditer(question))
    runs = []
    for i, first in enumerate(markers):
        key = first.group(1) or first.group(2)
        if key not in ("A", "1"):
            continue
        run = [first]
        expected = _next_key(key)
        for later in markers[i + 1 :]:
            if (later.group(1) or later.group(2)) == expected:
                run.append(later)
                expected = _next_key(expected)
        if len(run) >= 2:
            runs.append(run)
    return runs


def _next_key(key: str) -> str:
    return str(int(key) + 1) if key.isdigit() else chr(ord(key) + 1)


def _labelled_options(question: str) -> tuple[ChoiceOption, ...]:
    runs = _marker_runs(question)
    if not runs:
        return ()
    # The longest run wins; among equals, the last one (options close the question).
    run = max(reversed(runs), key=len)
    options = []
    for marker, following in zip(run, run[1:] + [None]):
        key = marker.group(1) or marker.group(2)
        if following is not None:
            text = question[marker.end() : following.start()]
        else:
            rest = question[marker.end() :].lstrip()
            end = _LAST_OPTION_END.search(rest)
            text = rest[: end.start()] if end else rest
        options.append(ChoiceOption(key, _clean_option_text(text)))
    return tuple(options)


def _unlabelled_options(question: str) -> tuple[ChoiceOption, ...]:
    for match in reversed(list(_BRACKETED.finditer(question))):
        parts = [_clean_option_text(p) for p in _UNLABELLED_SPLIT.split(match.group(1))]
        parts = [p for p in parts if p]
        if len(parts) >= 2:
            return tuple(ChoiceOption(None, p) for p in parts)
    return ()


def parse_options(question: str) -> tuple[ChoiceOption, ...]:
    """The options listed in a question, in order; () when none are found.

    Labelled options (A./B./... or 1./2./..., also "A)" and "(A)") are
    preferred; otherwise the last bracketed list "[ x or y ]" is used.
    """
    return _labelled_options(question) or _unlabelled_options(question)


def parse_yes_no(answer: str) -> bool | None:
    """True/False for an answer starting with yes/no ("Yes. There is ..."), else None."""
    words = _tokens(answer)
    if not words:
        return None
    if words[0] == "yes":
        return True
    if words[0] == "no":
        return False
    return None


def _strip_answer_prefix(answer: str) -> str:
    return _ANSWER_PREFIX.sub("", answer, count=1).strip()


def _leading_key(answer: str, options: tuple[ChoiceOption, ...]) -> int | None:
    """Index of the option named by a key at the start of the answer."""
    keys = {o.key: i for i, o in enumerate(options) if o.key is not None}
    match = re.match(rf"\(?({_KEY})\)?(?=$|[.):,;\s])", answer)
    if not match or match.group(1) not in keys:
        return None
    index = keys[match.group(1)]
    rest = answer[match.end() :]
    if not rest.strip() or rest[0] in ".):,;" or match.group(0).startswith("("):
        return index
    # "B Antero-posterior": a bare key then text must continue with that option's text.
    option_words = _tokens(options[index].text)
    return index if option_words and _tokens(rest)[: len(option_words)] == option_words else None


def _key_list(answer: str, options: tuple[ChoiceOption, ...]) -> frozenset[int] | None:
    """Indices named by an answer made only of keys ("A, C", "A and C", "A. x; C. y")."""
    keys = {o.key: i for i, o in enumerate(options) if o.key is not None}
    if not keys:
        return None
    bare = re.fullmatch(
        rf"\s*\(?({_KEY})\)?(?:\s*(?:,|;|/|&|\band\b|\s)\s*\(?(?:{_KEY})\)?)*\s*\.?\s*", answer
    )
    if bare:
        named = re.findall(rf"({_KEY})", answer)
    else:
        if _leading_key(answer, options) is None:
            return None
        named = [m.group(1) or m.group(2) for m in _MARKER.finditer(answer)]
    if not named or any(k not in keys for k in named):
        return None
    return frozenset(keys[k] for k in named)


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def _token_f1(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    if not a or not b:
        return 0.0
    common = 0
    remaining = list(b)
    for word in a:
        if word in remaining:
            remaining.remove(word)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def _option_value(indices: frozenset[int]) -> frozenset[str]:
    return frozenset(f"opt:{i}" for i in indices)


def _match_option_text(words: tuple[str, ...], options: tuple[ChoiceOption, ...], multi: bool) -> ParsedAnswer:
    option_words = [_tokens(o.text) for o in options]
    if multi:
        found = frozenset(i for i, ow in enumerate(option_words) if _contains(words, ow))
        return ParsedAnswer(_option_value(found), "text") if found else _UNPARSEABLE
    # The answer starts with an option's text (longest option first: "no" vs "no change").
    by_length = sorted(range(len(options)), key=lambda i: -len(option_words[i]))
    for i in by_length:
        if option_words[i] and words[: len(option_words[i])] == option_words[i]:
            return ParsedAnswer(_option_value(frozenset({i})), "text")
    # Exactly one multi-word option appears inside the answer.
    inside = [i for i, ow in enumerate(option_words) if len(ow) > 1 and _contains(words, ow)]
    if len(inside) == 1:
        return ParsedAnswer(_option_value(frozenset(inside)), "text")
    # A paraphrase: clearly closest option by token F1.
    f1 = sorted(((_token_f1(words, ow), i) for i, ow in enumerate(option_words)), reverse=True)
    best, runner_up = f1[0], (f1[1][0] if len(f1) > 1 else 0.0)
    if best[0] >= FUZZY_MIN_F1 and best[0] - runner_up >= FUZZY_MIN_MARGIN:
        return ParsedAnswer(_option_value(frozenset({best[1]})), "fuzzy")
    return _UNPARSEABLE


def _parse_with_options(answer: str, options: tuple[ChoiceOption, ...], multi: bool) -> ParsedAnswer:
    answer = _strip_answer_prefix(answer)
    if multi:
        named = _key_list(answer, options)
        if named:
            return ParsedAnswer(_option_value(named), "key")
    else:
        index = _leading_key(answer, options)
        if index is not None:
            return ParsedAnswer(_option_value(frozenset({index})), "key")
    words = _tokens(answer)
    if not words:
        return _UNPARSEABLE
    return _match_option_text(words, options, multi)


def _parse_without_options(answer: str) -> ParsedAnswer:
    yes_no = parse_yes_no(answer)
    if yes_no is not None:
        return ParsedAnswer(_YES if yes_no else _NO, "yes_no")
    match = re.match(r"\s*\(?([A-Z])\)?(?=$|[.):,;])", _strip_answer_prefix(answer))
    if match:
        return ParsedAnswer(frozenset({f"key:{match.group(1)}"}), "key")
    return _UNPARSEABLE


def parse_closed_answer(answer: str, question: str, qtype: QType) -> ParsedAnswer:
    """Canonical value of a closed-ended answer to `question` (see the module docstring).

    A yes/no question that lists yes/no options is parsed against those
    options, so "B." and "Yes." agree when option B is "Yes.".
    """
    if not qtype.is_closed:
        raise ValueError(f"qtype {qtype} is not closed-ended")
    options = parse_options(question)
    if options:
        return _parse_with_options(answer, options, multi=qtype.kind == "multi-choice")
    return _parse_without_options(answer)


@dataclasses.dataclass(frozen=True)
class ClosedJudgement:
    """Whether a closed-ended prediction is right.

    correct: True when prediction and reference parse to the same value; False when they
        differ or the prediction does not parse; None when the reference itself does not parse
        (the turn cannot be scored).
    """

    correct: bool | None
    prediction: ParsedAnswer
    reference: ParsedAnswer


def judge_closed_answer(prediction: str, reference: str, question: str, qtype: QType) -> ClosedJudgement:
    """The one rule for a closed-ended answer's correctness (scoring and the case report use it)."""
    parsed_reference = parse_closed_answer(reference, question, qtype)
    parsed_prediction = parse_closed_answer(prediction, question, qtype)
    if not parsed_reference.ok:
        return ClosedJudgement(None, parsed_prediction, parsed_reference)
    correct = parsed_prediction.ok and parsed_prediction.value == parsed_reference.value
    return ClosedJudgement(correct, parsed_prediction, parsed_reference)
