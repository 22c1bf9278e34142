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
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection

from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT, derive_messages
from data_pipeline.schema.records import Study

__all__ = ["decisive_answer", "with_decisive_answers"]

_YES_NO = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)
_LETTER = re.compile(r"\s*([A-Z])\.(?=\s|$)")


def decisive_answer(qtype: str, answer: str) -> str:
    """The decisive part of a closed answer (see the module docstring); `answer` otherwise."""
    if qtype == "yes_no":
        match = _YES_NO.match(answer)
        return f"{match.group(1)}." if match else answer
    if qtype == "single-choice":
        match = _LETTER.match(answer)
        return f"{match.group(1)}." if match else answer
    return answer


def with_decisive_answers(study: Study, stages: Collection[int] | None = None) -> Study:
    """`study` with the answer of every turn of `stages` (None = every turn) replaced by its
    `decisive_answer` (its released chat `messages`, if any, rebuilt from them with the same
    system message)."""
    items = tuple(dataclasses.replace(item, answer=decisive_answer(item.qtype, item.answer))
                  if stages is None or item.stage in stages else item for item in study.items)
    if study.messages is None:
        return study.replace(items=items)
    system = next((m.content for m in study.messages if m.role == "system"), DEFAULT_SYSTEM_PROMPT)
    return study.replace(items=items, messages=derive_messages(items, system))
