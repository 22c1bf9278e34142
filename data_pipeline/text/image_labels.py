"""Finding labels of a study's current image, read from its own stage-2 answers.

An auxiliary image-label loss (`cxrtrek_jax.train.step`, `image_label_weight`) needs, per
training row, which findings the current radiograph shows. The data already says so: stage 2
asks about findings ("Is there a pleural effusion?") and answers "Yes." or "No.". A study's
labels are those answers for the presence questions of `data_pipeline.schema.findings`, in the order
of `IMAGE_LABEL_KINDS`; a finding its stage 2 does not ask about (or answers both ways) is
unknown (mask 0). The same rule serves the phantom and released CXRTrek files: nothing here
reads the phantom's ground truth.

A question counts for a finding when, without `<image>` placeholders, case and surrounding
space, it is one of that finding's `PRESENCE_QUESTIONS` wordings, or it is a yes/no question
naming exactly one finding by its `FINDING_NAMES` name ("Is there evidence of pneumothorax?").
"""

from __future__ import annotations

import numpy as np

from data_pipeline.text.decisive_answers import decisive_answer
from data_pipeline.schema.findings import FINDING_KINDS, FINDING_NAMES, PRESENCE_QUESTIONS
from data_pipeline.schema.records import Study

__all__ = ["IMAGE_LABEL_KINDS", "LABEL_STAGE", "presence_answers", "study_image_labels"]

IMAGE_LABEL_KINDS = FINDING_KINDS
LABEL_STAGE = 2  # findings identification


def _normalise(question: str) -> str:
    return " ".join(question.replace("<image>", " ").lower().split())


_WORDINGS = {_normalise(q): kind for kind, questions in PRESENCE_QUESTIONS.items() for q in questions}


def _asked_kind(question: str) -> str | None:
    """The finding a presence question asks about, or None (no finding, or several)."""
    text = _normalise(question)
    if text in _WORDINGS:
        return _WORDINGS[text]
    named = [kind for kind in IMAGE_LABEL_KINDS if FINDING_NAMES[kind] in text]
    return named[0] if len(named) == 1 else None


def presence_answers(study: Study) -> dict[str, bool]:
    """finding kind -> present, from the study's stage-2 yes/no answers (module docstring);
    a kind answered both ways is left out."""
    seen: dict[str, set[bool]] = {}
    for item in study.items:
        if item.stage != LABEL_STAGE or item.qtype != "yes_no":
            continue
        kind = _asked_kind(item.question)
        decision = decisive_answer(item.qtype, item.answer).lower()  # "yes." / "no." when it decides
        if kind is not None and decision in ("yes.", "no."):
            seen.setdefault(kind, set()).add(decision == "yes.")
    return {kind: values.pop() for kind, values in seen.items() if len(values) == 1}


def study_image_labels(study: Study) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known), both float32[K] over `IMAGE_LABEL_KINDS`: 1 = present, 0 = absent, and
    1 where the study's stage 2 answers it, 0 where the label is unknown."""
    answers = presence_answers(study)
    labels = np.array([float(answers.get(kind, False)) for kind in IMAGE_LABEL_KINDS], np.float32)
    known = np.array([float(kind in answers) for kind in IMAGE_LABEL_KINDS], np.float32)
    return labels, known
