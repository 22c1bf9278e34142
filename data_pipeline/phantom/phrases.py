"""Radiology language for phantom findings: names, descriptions, change and
trend wording, advice, and CheXpert-style report sentences.

Report sentences name positives plainly ("There is a small right pleural
effusion.") and state negatives with an explicit negation ("No pleural
effusion or pneumothorax."), so a rule-based CheXpert-style labeller reads the
ground truth back from a reference report.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.schema.findings import CHEXPERT_LABELS, FINDING_NAMES, PATHOLOGIES
from data_pipeline.phantom.findings import Acquisition, ExamTruth, Finding

__all__ = [
    "NAMES",
    "CHEXPERT_LABELS",
    "PATHOLOGIES",
    "chexpert_labels",
    "describe",
    "location",
    "finding_sentence",
    "negative_sentences",
    "subject",
    "change_phrase",
    "trend_word",
    "trend_phrase",
    "NEXT_STEPS",
    "next_step",
    "NO_ACTION",
    "advice_sentence",
    "technique_sentence",
    "quality_phrase",
    "pick",
]

NAMES = FINDING_NAMES  # the finding vocabulary is data_pipeline.schema.findings


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One of `options`, chosen by the seeded generator."""
    return options[int(rng.integers(len(options)))]


def chexpert_labels(exam: ExamTruth) -> dict[str, int]:
    """CheXpert labels of an exam (1 present, 0 absent), "No Finding" included."""
    labels = {CHEXPERT_LABELS[k]: int(k in exam.kinds) for k in CHEXPERT_LABELS}
    labels["No Finding"] = int(not any(k in exam.kinds for k in PATHOLOGIES))
    return labels


def location(f: Finding) -> str:
    """Where a finding is, e.g. "right lower zone", "left", "bilateral"."""
    if f.zone:
        return f"{f.side} {f.zone} zone"
    return f.side


def _devices_phrase(f: Finding) -> str:
    parts = []
    if "endotracheal tube" in f.devices:
        parts.append("an endotracheal tube")
    if "central venous catheter" in f.devices:
        parts.append(f"a {f.side}-sided central venous catheter")
    return " and ".join(parts)


def describe(f: Finding) -> str:
    """Noun phrase for a finding, e.g. "a small right pleural effusion"."""
    if f.kind == "pleural_effusion":
        if f.side == "bilateral":
            return f"{f.size} bilateral pleural effusions"
        return f"a {f.size} {f.side} pleural effusion"
    if f.kind == "pneumothorax":
        return f"a {f.size} {f.side} pneumothorax"
    if f.kind == "consolidation":
        return f"consolidation in the {location(f)}"
    if f.kind == "nodule":
        return f"a {f.size} nodule in the {location(f)}"
    if f.kind == "cardiomegaly":
        return f"{f.size} cardiomegaly"
    return _devices_phrase(f)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def finding_sentence(f: Finding, rng: np.random.Generator) -> str:
    """One report sentence stating a present finding."""
    if f.kind == "support_devices":
        verb = "are" if len(f.devices) > 1 else "is"
        return _capitalise(f"{_devices_phrase(f)} {verb} in place.")
    if f.kind == "cardiomegaly":
        return pick(rng, (f"{_capitalise(describe(f))}.", f"The heart is enlarged, consistent with {describe(f)}."))
    if f.kind == "pleural_effusion" and f.side == "bilateral":
        return pick(rng, (f"There are {describe(f)}.", f"{_capitalise(describe(f))} are present."))
    return pick(rng, (f"There is {describe(f)}.", f"{_capitalise(describe(f))} is seen."))


def negative_sentences(exam: ExamTruth, rng: np.random.Generator) -> list[str]:
    """Explicit negations of the absent pathologies, grouped as radiologists do."""
    absent = [k for k in PATHOLOGIES if k not in exam.kinds]
    sentences = []
    pleural = [NAMES[k] for k in ("pleural_effusion", "pneumothorax") if k in absent]
    if pleural:
        sentences.append(f"No {' or '.join(pleural)}.")
    if "consolidation" in absent:
        sentences.append(pick(rng, ("No focal consolidation.", "No consolidation.")))
    if "nodule" in absent:
        sentences.append(pick(rng, ("No pulmonary nodule.", "No lung nodule or mass.")))
    if "cardiomegaly" in absent:
        sentences.append(pick(rng, ("No cardiomegaly.", "No cardiomegaly; the heart size is normal.")))
    return sentences


def technique_sentence(acquisition: Acquisition, has_lateral: bool) -> str:
    view = "PA" if acquisition.view == "PA" else "AP portable"
    lateral = " and lateral" if has_lateral else ""
    return f"{view}{lateral} view of the chest."


def quality_phrase(acquisition: Acquisition) -> str:
    """Technical quality, e.g. "the patient is rotated to the right and the lung volumes are low"."""
    rotation = (
        f"the patient is rotated to the {acquisition.rotation}"
        if acquisition.rotated
        else "there is no patient rotation"
    )
    inspiration = (
        "the lung volumes are low due to poor inspiration"
        if acquisition.low_inspiration
        else "inspiration is adequate"
    )
    return f"{rotation} and {inspiration}"


def subject(kind: str, shown: Finding) -> tuple[str, bool]:
    """("The right pleural effusion", plural?) naming a finding in a sentence."""
    if kind == "support_devices":
        return "The support devices", True
    if kind == "cardiomegaly":
        return "The cardiomegaly", False
    if kind in ("consolidation", "nodule"):
        return f"The {location(shown)} {kind}", False
    if shown.side == "bilateral":
        return f"The bilateral {NAMES[kind]}s", True
    return f"The {shown.side} {NAMES[kind]}", False


# Change from an earlier to a later exam: (singular, plural) verb phrases.
_CHANGE_VERBS = {
    "new": ("is new", "are new"),
    "resolved": ("has resolved", "have resolved"),
    "larger": ("has increased", "have increased"),
    "smaller": ("has decreased", "have decreased"),
    "unchanged": ("is unchanged", "are unchanged"),
}


def change_phrase(kind: str, change: str, shown: Finding) -> str:
    """A stage-5 sentence on how one finding changed since the prior exam,
    e.g. "The right pleural effusion has increased." `shown` is the finding as
    seen on an exam it is present in."""
    name, plural = subject(kind, shown)
    if kind == "support_devices" and change == "resolved":
        return "The support devices have been removed."
    return f"{name} {_CHANGE_VERBS[change][plural]}."


# Change from the current to the later exam, as a clinical trend.
_TRENDS = {"new": "new", "resolved": "resolved", "larger": "worsened", "smaller": "improved", "unchanged": "stable"}


def trend_word(kind: str, change: str) -> str:
    """Trend of a finding on the follow-up exam ("improved", "worsened",
    "stable", "resolved", "new"); devices are "removed" rather than resolved."""
    if kind == "support_devices" and change == "resolved":
        return "removed"
    return _TRENDS[change]


def trend_phrase(kind: str, change: str, shown: Finding) -> str:
    """A stage-6 sentence on the course of one finding on the follow-up exam,
    e.g. "The right pleural effusion has improved." `shown` is the finding as
    seen on an exam it is present in."""
    trend = trend_word(kind, change)
    name, plural = subject(kind, shown)
    if change == "new":
        text = describe(shown)
        return f"{_capitalise(text)} {'have' if plural else 'has'} developed."
    if trend == "stable":
        return f"{name} {'are' if plural else 'is'} stable."
    if trend == "removed":
        return f"{name} have been removed."
    return f"{name} {'have' if plural else 'has'} {trend}."


NO_ACTION = "no further imaging"
# Short next steps, most urgent first (the stage-7 single-choice options).
NEXT_STEPS = (
    "urgent chest tube placement",
    "observation with a repeat chest radiograph",
    "diagnostic and therapeutic thoracentesis",
    "antibiotic treatment and a follow-up radiograph",
    "ultrasound evaluation of the effusion",
    "contrast-enhanced chest CT and tissue sampling",
    "follow-up chest CT",
    "echocardiography",
    "confirmation of the device positions",
    NO_ACTION,
)


def next_step(f: Finding) -> tuple[int, str, str]:
    """(priority, short next step, advice sentence) for one finding; a lower
    priority is more urgent (the index in NEXT_STEPS)."""
    if f.kind == "pneumothorax" and f.size == "large":
        sentence = f"The large {f.side} pneumothorax requires urgent chest tube placement."
        return _step(0, sentence)
    if f.kind == "pneumothorax":
        return _step(1, f"The small {f.side} pneumothorax can be observed with a repeat chest radiograph in a few hours.")
    if f.kind == "pleural_effusion" and f.size == "large":
        return _step(2, "The large pleural effusion should be evaluated with ultrasound and drained by thoracentesis.")
    if f.kind == "consolidation":
        return _step(3, (
            "The consolidation should be correlated clinically for pneumonia, treated, and followed up "
            "with a radiograph in six to eight weeks to confirm resolution."
        ))
    if f.kind == "pleural_effusion":
        return _step(4, "Ultrasound evaluation of the small pleural effusion is suggested, with thoracentesis if clinically relevant.")
    if f.kind == "nodule" and f.size == "large":
        return _step(5, "The large nodule warrants a contrast-enhanced chest CT and consideration of tissue sampling.")
    if f.kind == "nodule":
        return _step(6, "A follow-up chest CT is recommended to characterise the small nodule.")
    if f.kind == "cardiomegaly":
        return _step(7, "Echocardiography is recommended to assess the enlarged heart.")
    return _step(8, "The positions of the support devices should be confirmed clinically.")


def _step(priority: int, sentence: str) -> tuple[int, str, str]:
    return priority, NEXT_STEPS[priority], sentence


def advice_sentence(findings: tuple[Finding, ...]) -> str:
    """Recommendations for all findings, most urgent first."""
    steps = sorted(next_step(f) for f in findings)
    if not steps:
        return "No acute cardiopulmonary abnormality is seen, so no further imaging is needed."
    return " ".join(sentence for _, _, sentence in steps)
