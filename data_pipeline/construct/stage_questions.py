"""The wording of constructed questions: seeded variety, the authors' format hints and option layouts.

The released sample (`dataset/train_swift_demo.json` of the CXRTrek authors) phrases every
question several ways and ends many with a format hint ("Respond with yes or no only.",
"Limit to 20 words maximum.", "Offer an answer in at least 60 words."); closed questions list
their options inline ("A. No. or B. Yes.", "[ 1. x; 2. y or 3. z ]") and are sometimes wrapped
("Reply to '...' with just the answer, nothing else."). This module holds those phrasings and
picks among them with a `Wording`, a `random.Random` seeded from the study's identity and the
stage, so the same study always gets the same words (and one stage's choices never shift
another's).

Hints are chosen to agree with the answer: a yes/no-only hint only where the answer is a bare
"Yes."/"No.", a word limit only where the answer is within it, a minimum length only where the
answer reaches it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from data_pipeline.schema.records import IMAGE_PLACEHOLDER

__all__ = [
    "Wording", "wording_for", "word_count", "YES_NO_ONLY_PREFIXES", "YES_NO_ONLY_SUFFIXES", "SHORT_HINTS",
    "LONG_HINT", "SHORT_WORD_LIMIT", "caption_hint", "choice_question", "yes_no_question",
    "join_phrases", "capitalise", "CURRENT_INTRODUCTIONS", "PRIOR_INTRODUCTIONS", "introduce_images",
]

# A short answer is at most this many words (the authors' "Limit to 20 words maximum.").
SHORT_WORD_LIMIT = 20

YES_NO_ONLY_PREFIXES = (
    "Choose between yes or no: ",
    "Please answer the question only in yes/no: ",
    "Respond with either yes or no: ",
    "Select either yes or no: ",
    "Answer the question with only yes or no: ",
)
YES_NO_ONLY_SUFFIXES = (" Respond with yes or no only.", " Answer with yes or no only.")

SHORT_HINTS = (
    f"Limit to {SHORT_WORD_LIMIT} words maximum.",
    "Answer the question in short.",
    "Be succinct and direct in your response.",
    "Keep your answer brief and to the point.",
    "Focus on key findings only.",
    "Please provide a succinct overview, focusing on the main points.",
    "A short answer highlighting the key takeaways is preferred.",
    "Provide a condensed answer, omitting superfluous details.",
    f"Around {SHORT_WORD_LIMIT} word response.",
    f"Max {SHORT_WORD_LIMIT} word answer.",
    f"Response <= {SHORT_WORD_LIMIT} words.",
)
# "Offer an answer in at least {n} words." with n a multiple of 10 the answer reaches.
LONG_HINT = "Offer an answer in at least {n} words."
_DETAIL_HINTS = (
    "Please provide a comprehensive and detailed answer.",
    "Answer the question in detail.",
    "Offer a complete and elaborate answer.",
)

# Option intros: single answer, several answers.
_SINGLE_INTROS = (
    "Select the correct answer from the options below:",
    "Only one answer is valid:",
    "The correct option is:",
    "Mark the most appropriate response:",
    "Identify the correct choice:",
)
_MULTI_INTROS = (
    "Select all applicable answers:",
    "Multiple options may be correct. Choose them all:",
    "Which of these are valid? (one or multiple is true answer)",
    "Tick all statements that hold true:",
    "Identify all correct responses from the list:",
)
_ANSWER_ONLY_SUFFIXES = (
    " Answer the question directly, without any additional text.",
    " Without any explanation, just output your answer.",
    " Respond to question with the answer only, no explanation.",
)
# Wrappers around a whole closed question ("{q}" ends with its option list).
_ANSWER_ONLY_WRAPPERS = (
    "Reply to '{q}' with just the answer, nothing else.",
    "Only provide the answer for: {q}",
    "Give only the answer to: {q}",
    "For question: '{q}', write only the answer.",
    "Only state the answer for the following question: {q}",
)

# How the current study's images and the prior study's images are introduced (the sample's
# phrasings; "{images}" is one `<image>` per view, space-separated).
CURRENT_INTRODUCTIONS = (
    "Here is the current X-ray image: {images} .",
    "Current X-ray: {images} .",
    "The X-ray taken at this time is shown below: {images} .",
    "Current X-ray image is shown below: {images} .",
    "The main study image is shown below: {images} .",
    "This is the current X-ray image: {images} .",
    "This is the main study image of the patient: {images} .",
)
PRIOR_INTRODUCTIONS = (
    "Reference X-ray: {images} .",
    "Reference X-ray image is shown below: {images} .",
    "This is the reference X-ray image: {images} .",
    "The reference X-ray image of the patient is shown below: {images} .",
    "The previous X-ray image is displayed below: {images} .",
    "The X-ray taken previously is shown below: {images} .",
)


class Wording:
    """Seeded choices of wording for one stage of one study (a thin `random.Random`)."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def pick(self, options: Sequence[str]) -> str:
        return options[self._rng.randrange(len(options))]

    def chance(self, probability: float) -> bool:
        return self._rng.random() < probability

    def shuffled(self, values: Sequence) -> list:
        out = list(values)
        self._rng.shuffle(out)
        return out

    def sample(self, values: Sequence, k: int) -> list:
        return self._rng.sample(list(values), min(k, len(values)))


def wording_for(study_key: str, stage: int, seed: int = 0) -> Wording:
    """The `Wording` of one stage of the study `study_key` ("source/pat_id/study_id") under the
    wording `seed`: seeded by the SHA-256 of all three, so it is the same on every machine and run."""
    digest = hashlib.sha256(f"{study_key}#stage{int(stage)}#seed{int(seed)}".encode()).digest()
    return Wording(int.from_bytes(digest[:8], "big"))


def word_count(text: str) -> int:
    return len(text.split())


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_phrases(phrases: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    phrases = list(phrases)
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def yes_no_question(wording: Wording, stem: str) -> tuple[str, bool]:
    """(question, bare): the stem, two times in three with a yes/no-only hint (prefix or suffix);
    `bare` says the answer must then be a bare "Yes."/"No."."""
    if not wording.chance(2 / 3):
        return stem, False
    if wording.chance(0.5):
        return wording.pick(YES_NO_ONLY_PREFIXES) + stem, True
    return stem + wording.pick(YES_NO_ONLY_SUFFIXES), True


def caption_hint(wording: Wording, question: str, answer: str) -> str:
    """`question` with, one time in two, a length hint the answer honours: a short-answer hint
    for answers of at most `SHORT_WORD_LIMIT` words, "at least N words" for answers of 60 words
    or more (N rounded down to tens, at most 100), a request for detail for answers of 30-59 words."""
    if not wording.chance(0.5):
        return question
    words = word_count(answer)
    if words <= SHORT_WORD_LIMIT:
        return f"{question} {wording.pick(SHORT_HINTS)}"
    if words >= 60:
        return f"{question} {LONG_HINT.format(n=min(100, 10 * (words // 10)))}"
    if words >= 30:
        return f"{question} {wording.pick(_DETAIL_HINTS)}"
    return question


def _option_layout(wording: Wording, labelled: Sequence[str]) -> str:
    """Options inline as the sample lists them: "A. x; B. y or C. z", "A. x or B. y", or either
    in brackets "[ ... ]"; two options are always joined by " or "."""
    body = "; ".join(labelled[:-1]) + " or " + labelled[-1] if len(labelled) > 1 else labelled[0]
    return f"[ {body} ]." if wording.chance(0.5) else body


def choice_question(wording: Wording, stem: str, labelled: Sequence[str], multi: bool) -> str:
    """A closed question over labelled options ("A. Yes.", "2. Left pleural space."): the stem,
    an intro, the options inline, then either an answer-only suffix, a wrapper, or nothing."""
    intro = wording.pick(_MULTI_INTROS if multi else _SINGLE_INTROS)
    question = f"{stem} {intro} {_option_layout(wording, labelled)}"
    style = wording.pick(("plain", "suffix", "wrapper"))
    if style == "suffix":
        return question + wording.pick(_ANSWER_ONLY_SUFFIXES)
    if style == "wrapper":
        return wording.pick(_ANSWER_ONLY_WRAPPERS).format(q=question)
    return question


def introduce_images(wording: Wording, question: str, count: int, introductions: Sequence[str]) -> str:
    """`question` with `count` `<image>` placeholders introduced before or after it."""
    if count <= 0:
        return question
    intro = wording.pick(introductions).format(images=" ".join([IMAGE_PLACEHOLDER] * count))
    return f"{intro} {question}" if wording.chance(0.5) else f"{question} {intro}"
