"""Scoring free answers to VQA questions as the medical VQA papers report them.

Answers are compared as their lower-cased word tokens (`answer_tokens`: runs of letters and
digits; punctuation and case dropped, so "Yes." equals "yes"):
- closed questions: correct when the prediction's tokens equal the reference's, or, for a yes/no
  reference, when the prediction starts with the same yes/no (`answer_parsing.parse_yes_no`:
  "Yes, there is ..." is a yes) -> closed accuracy;
- open questions: recall, the share of the reference's distinct tokens found among the
  prediction's (LLaVA-Med's open-question "recall"), and exact match (equal tokens).
"""

from __future__ import annotations

import re

from cxrtrek_jax.evaluation.metrics.answer_parsing import parse_yes_no

__all__ = ["answer_tokens", "closed_correct", "open_recall", "exact_match"]

_WORD = re.compile(r"[a-z0-9]+")


def answer_tokens(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def exact_match(prediction: str, reference: str) -> bool:
    return answer_tokens(prediction) == answer_tokens(reference)


def closed_correct(prediction: str, reference: str) -> bool:
    expected = parse_yes_no(reference)
    if expected is not None and answer_tokens(reference) in (("yes",), ("no",)):
        return parse_yes_no(prediction) == expected
    return exact_match(prediction, reference)


def open_recall(prediction: str, reference: str) -> float:
    """|distinct reference tokens in the prediction| / |distinct reference tokens| (0 for an empty reference)."""
    wanted = set(answer_tokens(reference))
    if not wanted:
        return 0.0
    return len(wanted & set(answer_tokens(prediction))) / len(wanted)
