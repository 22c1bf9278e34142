"""Closed answers cut to the part that decides them, for an image-dense alignment phase.

A CXRTrek yes/no answer is "Yes." or "No.", often followed by a detail sentence ("Yes. The heart
is enlarged, cardiothoracic ratio 0.61."), and a single-choice answer is "<letter>. <option>".
Trained per token, the one token the image decides (the "Yes"/"No", the letter) then carries a
small share of the answer's loss (about 1 in 8 on the phantom's stage-1/2 answers), the rest
being words that the question and that first token already predict. `decisive_answer` keeps
that first part: "Yes." / "No." for yes/no, "<letter>." for single-choice. Every other question
type, and a closed answer that does not start that way, is returned unchanged.

The cut can be limited to some stages (`with_decisive_answers(study, stages)`). The words it
removes are not always redundant: the stage-1 detail "No. This is a PA view." (to "Is this an
AP view?") names the view outright, which the image alone decides, while "No." is the view
combined with the question's wording; keeping such details is what lets a model from scratch
read the view before it learns that combination (measured in docs/notes/2026-12-grounding.md).

The conditional cut (`only_if_carried=True`) cuts an answer only when what it removes is
*carried* by the study's stage-3 turns, and keeps it whole otherwise: a stage-2 "Yes. There is a
small right pneumothorax." loses its size when stage 3 asks only the side. The rule
(`uncarried_words`): the removed detail is split into clauses (at , ; : . ! ? and at "and",
"with", "but", "however", "though", "although", "whereas", "while", "which", "except"); a clause holding a
negation cue (no, not, n't, cannot, without, none, absent, absence, free) states an absence,
which the decisive part with the question already says, and is skipped; the content words of
the other clauses are lower-cased runs of letters and digits of two characters or more, a plural
folded to its singular (-ies -> -y, a final -s dropped), less function words (`_FUNCTION_WORDS`),
words that say only that or where something is seen (`_ASSERTION_WORDS`: present, evidence,
noted, due, region, ...)
and the question's own words. The detail is carried when every one of them appears among the
words (folded the same way) of the study's stage-3 questions and answers (`stage3_words`); a
detail with no content word is carried. Plain word match, no synonyms: "No. The heart is
enlarged." to "Is the heart normal?" needs "enlarged" at stage 3. `decisive_cut` returns the
study and its `CutCounts` (answers cut, kept whole, cut although their detail is not carried).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable

from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT, derive_messages
from data_pipeline.schema.records import QAItem, Study

__all__ = ["CutCounts", "decisive_answer", "decisive_cut", "stage3_words", "uncarried_words",
           "with_decisive_answers"]


def _fold(word: str) -> str:
    """A plural folded to its singular: -ies -> -y, a final -s (not -ss) dropped."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


_YES_NO = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)
_LETTER = re.compile(r"\s*([A-Z])\.(?=\s|$)")
_YES_NO_WITH_STOP = re.compile(r"\s*(?:yes|no)\b\.?", re.IGNORECASE)
# The stage whose turns carry a finding's attributes (location, size, side) in a CXRTrek chain.
_DETAIL_STAGE = 3
_WORD = re.compile(r"[a-z0-9]+")
_CLAUSE_BREAK = re.compile(r"[,;:.!?]|\b(?:and|with|but|however|though|although|whereas|while|which|except)\b")
_NEGATION = re.compile(r"\b(?:no|not|cannot|without|none|absent|absence|free)\b|n['’]t\b")
_FUNCTION_WORDS = frozenset("""
a an the and or nor but of in on at to for from by with within into onto over under as is are was
were be been being am has have had do does did this that these those there here it its which who
whom what where when how any some yes i you we he she they me us them my your our his her their
also both either neither other than then so such very can could may might will would should shall
must only just still""".split())
_ASSERTION_WORDS = frozenset(_fold(w) for w in """
present presence evidence evident seen visible visualized visualised noted note found identified
observed observe observes demonstrated demonstrates demonstrate show shows shown showing appear
appears appearance detected confirm confirms confirmed consistent suggest suggests suggestive
suggesting indicate indicates indicating indicative likely possible possibly definite definitely
finding findings place sided image images x ray xray radiograph radiographic imaging chest study
scan film suggested indicated evidenced reveal reveals revealed based given due include including
upon review reviewing further additionally therefore overall beyond characterized described
particularly specifically region area part aspect""".split())


@dataclasses.dataclass(frozen=True)
class CutCounts:
    """What a cut did to the closed answers of the stages it covers (add them up with `+`).

    cut: answers shortened to their decisive part; kept_whole: answers with a detail left whole
    because stage 3 does not carry it (conditional cut only); cut_uncarried: answers shortened
    although stage 3 does not carry their detail (unconditional cut only).
    """

    cut: int = 0
    kept_whole: int = 0
    cut_uncarried: int = 0

    def __add__(self, other: "CutCounts") -> "CutCounts":
        return CutCounts(self.cut + other.cut, self.kept_whole + other.kept_whole,
                         self.cut_uncarried + other.cut_uncarried)


def decisive_answer(qtype: str, answer: str) -> str:
    """The decisive part of a closed answer (see the module docstring); `answer` otherwise."""
    if qtype == "yes_no":
        match = _YES_NO.match(answer)
        return f"{match.group(1)}." if match else answer
    if qtype == "single-choice":
        match = _LETTER.match(answer)
        return f"{match.group(1)}." if match else answer
    return answer


def _words(text: str) -> set[str]:
    """The folded words (two characters or more) of `text`, function words left out."""
    return {_fold(w) for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _FUNCTION_WORDS}


def stage3_words(items: Iterable[QAItem]) -> frozenset[str]:
    """The folded words of the stage-3 questions and answers among `items` (a study's turns)."""
    return frozenset(w for item in items if item.stage == _DETAIL_STAGE
                     for w in _words(item.question) | _words(item.answer))


def _detail(qtype: str, answer: str) -> str:
    """What `decisive_answer` removes from `answer` (the text after "Yes."/"No."/"<letter>.")."""
    match = (_YES_NO_WITH_STOP if qtype == "yes_no" else _LETTER).match(answer)
    return answer[match.end():]


def uncarried_words(item: QAItem, carried: frozenset[str]) -> frozenset[str]:
    """The content words of what the cut removes from `item`'s answer that `carried` (the study's
    `stage3_words`) lacks (module docstring); empty when the cut removes nothing or all is carried."""
    if decisive_answer(item.qtype, item.answer) == item.answer:
        return frozenset()
    asked = _words(item.question)
    content = set()
    for clause in _CLAUSE_BREAK.split(_detail(item.qtype, item.answer).lower()):
        if not _NEGATION.search(clause):
            content |= _words(clause)
    return frozenset(content - asked - carried - _ASSERTION_WORDS)


def decisive_cut(study: Study, stages: Collection[int] | None = None, *,
                 only_if_carried: bool = False) -> tuple[Study, CutCounts]:
    """`study` with the answer of every turn of `stages` (None = every turn) replaced by its
    `decisive_answer` — with `only_if_carried`, only where the study's stage-3 turns carry what
    the cut removes (module docstring) — its released chat `messages`, if any, rebuilt from them
    with the same system message; and the `CutCounts`."""
    carried = stage3_words(study.items)
    items, counts = [], CutCounts()
    for item in study.items:
        short = decisive_answer(item.qtype, item.answer)
        if (stages is not None and item.stage not in stages) or short == item.answer:
            items.append(item)
            continue
        uncarried = bool(uncarried_words(item, carried))
        if only_if_carried and uncarried:
            items.append(item)
            counts += CutCounts(kept_whole=1)
        else:
            items.append(dataclasses.replace(item, answer=short))
            counts += CutCounts(cut=1, cut_uncarried=int(uncarried))
    items = tuple(items)
    if study.messages is None:
        return study.replace(items=items), counts
    system = next((m.content for m in study.messages if m.role == "system"), DEFAULT_SYSTEM_PROMPT)
    return study.replace(items=items, messages=derive_messages(items, system)), counts


def with_decisive_answers(study: Study, stages: Collection[int] | None = None, *,
                          only_if_carried: bool = False) -> Study:
    """`decisive_cut`'s study."""
    return decisive_cut(study, stages, only_if_carried=only_if_carried)[0]
