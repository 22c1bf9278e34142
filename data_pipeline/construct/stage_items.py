"""Building one constructed question-answer item, with its provenance and the authors' fields.

Every item carries, in its `extras`:

    "provenance": {"sentences": [{"study": "current"|"prior"|"next", "index": 3, "text": "..."}],
                   "rule": "advice_table:pneumothorax"}   (the rule when a rule, not a sentence,
                                                           made the answer; either may be absent)
    "target":     what the item asks about, as the authors name it ("abnormality_[pleural
                  effusion]", "foreign_body_[picc line]", "yes_no_abnormality", ...), where
                  there is one;
    "option_list" / "answer_list": the labelled options and the correct ones (closed items).

Items are made without image placeholders and with `image_input_count` 0; the study assembly
introduces the images and counts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from data_pipeline.construct.report_facts import ReportFacts
from data_pipeline.construct.stage_questions import Wording, choice_question, yes_no_question
from data_pipeline.schema.records import QAItem, freeze

__all__ = ["SentenceRef", "Provenance", "cite", "qa_item", "yes_no_item", "choice_item", "StageResult",
           "CURRENT", "PRIOR", "NEXT"]

# Which study a cited sentence belongs to.
CURRENT, PRIOR, NEXT = "current", "prior", "next"
_LETTERS = "ABCDEFGHIJ"


@dataclasses.dataclass(frozen=True)
class SentenceRef:
    """A report sentence an answer came from: its study, 0-based index and verbatim text."""

    study: str
    index: int
    text: str


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where an answer came from: report sentences, and/or the name of the rule that made it."""

    sentences: tuple[SentenceRef, ...] = ()
    rule: str = ""

    def __post_init__(self) -> None:
        if not self.sentences and not self.rule:
            raise ValueError("an answer needs a provenance: report sentences or a rule name")

    def __add__(self, other: "Provenance") -> "Provenance":
        rules = " + ".join(r for r in (self.rule, other.rule) if r)
        return Provenance(tuple(dict.fromkeys(self.sentences + other.sentences)), rules)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sentences:
            out["sentences"] = [{"study": s.study, "index": s.index, "text": s.text} for s in self.sentences]
        if self.rule:
            out["rule"] = self.rule
        return out


def cite(facts: ReportFacts, indices: Iterable[int], study: str = CURRENT, rule: str = "") -> Provenance:
    """The provenance of an answer read from sentences `indices` of `facts` (verbatim)."""
    by_index = {s.index: s for s in facts.sentences}
    refs = []
    for index in dict.fromkeys(indices):
        if index not in by_index:
            raise ValueError(f"sentence {index} is not a sentence of the {study} report "
                             f"(it has {len(facts.sentences)})")
        refs.append(SentenceRef(study, index, by_index[index].text))
    return Provenance(tuple(refs), rule)


@dataclasses.dataclass(frozen=True)
class StageResult:
    """A stage's items for one study, and what it left out and why (one line each)."""

    items: tuple[QAItem, ...] = ()
    skipped: tuple[str, ...] = ()

    def __add__(self, other: "StageResult") -> "StageResult":
        return StageResult(self.items + other.items, self.skipped + other.skipped)


def qa_item(stage: int, task_type: str, qtype: str, question: str, answer: str, provenance: Provenance,
            *, target: str = "", options: Sequence[str] = (), answers: Sequence[str] = (),
            fields: Mapping[str, Any] | None = None) -> QAItem:
    """One item; extras in the order target, option_list, answer_list, `fields` (further fields
    of the authors' items, e.g. a detection item's `bbox_list`), provenance."""
    extras: dict[str, Any] = {}
    if target:
        extras["target"] = target
    if options:
        extras["option_list"] = list(options)
        extras["answer_list"] = list(answers)
    extras.update(fields or {})
    extras["provenance"] = provenance.to_json()
    return QAItem(stage, task_type, qtype, 0, question, answer, freeze(extras))


def yes_no_item(wording: Wording, stage: int, task_type: str, stem: str, yes: bool, detail: str,
                provenance: Provenance, target: str = "") -> QAItem:
    """A yes/no item: "Yes."/"No." under a yes/no-only hint, else that followed by `detail`."""
    question, bare = yes_no_question(wording, stem)
    word = "Yes." if yes else "No."
    answer = word if bare or not detail else f"{word} {detail}"
    return qa_item(stage, task_type, "yes_no", question, answer, provenance, target=target)


def _period(text: str) -> str:
    return text if text.endswith(".") else text + "."


def choice_item(wording: Wording, stage: int, task_type: str, stem: str, options: Sequence[str],
                correct: Sequence[str], provenance: Provenance, *, target: str = "", multi: bool = False,
                shuffle: bool = True) -> QAItem:
    """A closed item over `options` (texts, each ending in a period once labelled).

    Options are shuffled (unless `shuffle` is False) and labelled "A." or "1."; qtype is
    "single-choice" for one correct option, else (or when `multi`) "multi-choice-N" with N the
    number of options. The answer is the correct labelled option, several joined by ", "
    ("B. Cardiomegaly, E. Atelectasis.")."""
    if not correct or any(c not in options for c in correct) or len(set(options)) != len(options):
        raise ValueError(f"choice item {stem!r}: correct {list(correct)} must be among distinct "
                         f"options {list(options)}")
    order = wording.shuffled(options) if shuffle else list(options)
    numbered = wording.chance(0.25)
    labelled = [f"{i + 1 if numbered else _LETTERS[i]}. {_period(text)}" for i, text in enumerate(order)]
    chosen = [labelled[order.index(c)] for c in sorted(correct, key=order.index)]
    multi = multi or len(correct) > 1
    qtype = f"multi-choice-{len(options)}" if multi else "single-choice"
    # Inline, as the sample lists them, only the last option keeps its period; so does the answer.
    inline = [text.removesuffix(".") for text in labelled[:-1]] + labelled[-1:]
    question = choice_question(wording, stem, inline, multi)
    answer = ", ".join(text.removesuffix(".") for text in chosen) + "."
    return qa_item(stage, task_type, qtype, question, answer, provenance, target=target,
                   options=labelled, answers=chosen)
