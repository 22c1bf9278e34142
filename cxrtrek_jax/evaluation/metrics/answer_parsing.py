"""Parsing closed-ended answers (yes/no, single- and multi-choice) to comparable values.

A question lists its options inside its text (`data_pipeline.text.choice_options` reads them, in
the layouts CXRTrek files use), and answers name an option by its key ("B", "B.", "(B)", "2."), by its text
("Antero-posterior."), by a paraphrase of its text, or, for yes/no
questions, by a leading yes/no word ("Yes. There is ..."). `parse_closed_answer` maps an answer to a canonical
value: a frozenset of option indices ("opt:0", "opt:1", ...) when the
question lists options, else {"yes"} / {"no"}, else the option key the
answer starts with ("key:B"). None means the answer could not be parsed.
"""

from __future__ import annotations

import dataclasses
import re

from data_pipeline.schema.stages import QType
from data_pipeline.text.choice_options import OPTION_KEY, OPTION_MARKER, ChoiceOption, parse_options

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

_WORD = re.compile(r"[a-z0-9]+")
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*)", re.IGNORECASE
)
_YES = frozenset({"yes"})
_NO = frozenset({"no"})


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
    match = re.match(rf"\(?({OPTION_KEY})\)?(?=$|[.):,;\s])", answer)
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
        rf"\s*\(?({OPTION_KEY})\)?(?:\s*(?:,|;|/|&|\band\b|\s)\s*\(?(?:{OPTION_KEY})\)?)*\s*\.?\s*", answer
    )
    if bare:
        named = re.findall(rf"({OPTION_KEY})", answer)
    else:
        if _leading_key(answer, options) is None:
            return None
        named = [m.group(1) or m.group(2) for m in OPTION_MARKER.finditer(answer)]
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
