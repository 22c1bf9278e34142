"""Question-answer turns for all eight CXRTrek stages, generated from the truth.

Every answer is determined by the current image (stage 5: with the prior
image, stage 6: with the later image). Each stage yields required ("core")
turns and optional ones; `build_turns` keeps the core turns, adds optional
turns up to a per-study target, and orders them. Later stages build on earlier
ones: stage-3 attribute and detection turns exist only for findings that a
stage-2 turn has established as present ("Yes"), stage 4 relates findings
described in stage 3, stages 5 and 6 compare the findings with the prior and
the later exam, stage 7 advises on them and stage 8 reports them.

Closed answers: yes/no answers start with "Yes" or "No" (sometimes followed by
a short sentence); choice answers are "<letter>. <option>", several joined by
", " for multi-choice. Options are listed in the question as "A. x B. y ...".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipeline.schema.boxes import format_boxes
from data_pipeline.phantom.config import PhantomConfig
from data_pipeline.schema.findings import PRESENCE_QUESTIONS
from data_pipeline.phantom.findings import KINDS, Finding, StudyTruth
from data_pipeline.phantom.phrases import (
    NAMES,
    NEXT_STEPS,
    NO_ACTION,
    PATHOLOGIES,
    advice_sentence,
    change_phrase,
    describe,
    finding_sentence,
    location,
    negative_sentences,
    next_step,
    pick,
    quality_phrase,
    technique_sentence,
    trend_phrase,
    trend_word,
)
from data_pipeline.schema.records import IMAGE_PLACEHOLDER

__all__ = ["Turn", "build_turns", "introduce_images"]

_LETTERS = "ABCDEFGH"


@dataclasses.dataclass(frozen=True)
class Turn:
    """One generated question-answer turn (images not yet introduced).

    key: what the turn asks about, e.g. "view", "finding:nodule",
        "attribute:nodule:zone", "detect:nodule", "change:nodule", "trend:nodule".
    finding: the finding kind the turn is about, "" when none.
    options / answers: lettered options and the correct ones (choice turns).
    """

    stage: int
    task_type: str
    qtype: str
    question: str
    answer: str
    key: str
    finding: str = ""
    options: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()

    def extras(self) -> dict[str, Any]:
        """Per-item fields written next to the schema fields."""
        out: dict[str, Any] = {"phantom_key": self.key}
        if self.options:
            out["option_list"] = list(self.options)
            out["answer_list"] = list(self.answers)
        return out


_CHOICE_FORMS = (
    "{stem} {options}",
    "{stem} Options: {options}",
    "{stem} Select the correct answer from the choices below: {options}",
    "{stem} Choose one: {options}. Answer with the option only.",
)
_MULTI_FORMS = (
    "{stem} {options}",
    "{stem} Options: {options}",
    "{stem} Select all that apply: {options}",
)


def _choice(
    rng, stage: int, task_type: str, stem: str, options: list[str], correct: str, key: str, finding: str = ""
) -> Turn:
    """Single-choice turn; options are shuffled and lettered."""
    order = [options[i] for i in rng.permutation(len(options))]
    lettered = [f"{_LETTERS[i]}. {text}" for i, text in enumerate(order)]
    answer = lettered[order.index(correct)]
    question = pick(rng, _CHOICE_FORMS).format(stem=stem, options=" ".join(lettered))
    return Turn(stage, task_type, "single-choice", question, answer, key, finding, tuple(lettered), (answer,))


def _multi_choice(rng, stage: int, task_type: str, stem: str, options: list[str], correct: list[str], key: str) -> Turn:
    """Multi-choice turn over `options` (already ordered); correct ones joined by ", "."""
    lettered = [f"{_LETTERS[i]}. {text}" for i, text in enumerate(options)]
    answers = tuple(lettered[options.index(c)] for c in sorted(correct, key=options.index))
    question = pick(rng, _MULTI_FORMS).format(stem=stem, options=" ".join(lettered))
    qtype = f"multi-choice-{len(options)}"
    return Turn(stage, task_type, qtype, question, ", ".join(answers), key, "", tuple(lettered), answers)


def _yes_no(rng, stage: int, task_type: str, question: str, truth: bool, detail: str, key: str, finding: str = "") -> Turn:
    """Yes/no turn; the answer is "Yes."/"No." or that followed by `detail`."""
    word = "Yes" if truth else "No"
    answer = f"{word}. {detail}" if detail and rng.random() < 0.6 else f"{word}."
    return Turn(stage, task_type, "yes_no", question, answer, key, finding)


def _caption(stage: int, task_type: str, question: str, answer: str, key: str, finding: str = "") -> Turn:
    return Turn(stage, task_type, "captioning", question, answer, key, finding)


def _split(rng, turns: list[Turn]) -> tuple[list[Turn], list[Turn]]:
    """One random turn of `turns` is core, the others (in their order) optional."""
    if not turns:
        return [], []
    chosen = int(rng.integers(len(turns)))
    return [turns[chosen]], turns[:chosen] + turns[chosen + 1:]


# ---------------------------------------------------------------- stage 1

_VIEW_NAMES = {"PA": ("PA", "posteroanterior (PA)"), "AP": ("AP", "anteroposterior (AP)")}


def _with_article(word: str) -> str:
    """"an AP", "a PA": the article by the first letter as spoken."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def _stage1(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    acq = truth.current.acquisition
    style = int(rng.integers(2))
    stem = pick(rng, (
        "Which projection was used for this frontal chest radiograph?",
        "What is the view of this frontal chest X-ray?",
        "View of the X-ray: ______",
        "Is this frontal radiograph a PA or an AP view?",
    ))
    view_choice = _choice(
        rng, 1, "View_Information", stem, [_VIEW_NAMES["PA"][style], _VIEW_NAMES["AP"][style]],
        _VIEW_NAMES[acq.view][style], "view",
    )
    asked = pick(rng, ("PA", "AP"))
    view_yes_no = _yes_no(
        rng, 1, "View_Information",
        pick(rng, ("Is this {av} view?", "Was this radiograph taken in the {v} projection?",
                   "Pick yes or no: is this frontal image {av} view?")).format(
            v=_VIEW_NAMES[asked][1], av=_with_article(_VIEW_NAMES[asked][1])),
        acq.view == asked, f"This is {_with_article(acq.view)} view.", "view",
    )
    rotated_detail = (
        f"The patient is rotated to the {acq.rotation}." if acq.rotated else "The patient is not rotated."
    )
    rotation_yes_no = _yes_no(
        rng, 1, "Quality_Assessment",
        pick(rng, ("Is the patient rotated?", "Is there patient rotation on this radiograph?",
                   "Does the image show rotation of the patient?")),
        acq.rotated, rotated_detail, "rotation",
    )
    rotation_choice = _choice(
        rng, 1, "Quality_Assessment",
        pick(rng, ("How is the patient positioned?", "Describe the patient rotation on this image.")),
        ["not rotated", "rotated to the right", "rotated to the left"],
        "not rotated" if not acq.rotated else f"rotated to the {acq.rotation}", "rotation",
    )
    adequate = not acq.low_inspiration
    if rng.random() < 0.5:
        question = pick(rng, ("Is the inspiratory effort adequate?", "Is the degree of inspiration adequate on this film?"))
        inspiration = _yes_no(rng, 1, "Quality_Assessment", question, adequate,
                              "Inspiration is adequate." if adequate else "The lung volumes are low.", "inspiration")
    else:
        question = pick(rng, ("Are the lung volumes low?", "Is there poor inspiration with low lung volumes?"))
        inspiration = _yes_no(rng, 1, "Quality_Assessment", question, not adequate,
                              "The lung volumes are low." if not adequate else "Inspiration is adequate.", "inspiration")
    quality = _caption(
        1, "Quality_Assessment",
        pick(rng, ("Assess the technical quality of this radiograph.",
                   "What is the assessment of the overall image quality?",
                   "Please provide the acquisition parameters and assess the image quality.")),
        f"{technique_sentence(acq, truth.has_lateral)[:-1]}; {quality_phrase(acq)}.",
        "quality",
    )
    views = _yes_no(
        rng, 1, "View_Information",
        pick(rng, ("Is a lateral view included in this study?", "Does the current study include a lateral radiograph?")),
        truth.has_lateral,
        "A lateral view follows the frontal view." if truth.has_lateral else "Only a frontal view is provided.",
        "lateral",
    )
    view_core, view_extra = _split(rng, [view_choice, view_yes_no])
    quality_core, quality_extra = _split(rng, [rotation_yes_no, rotation_choice, inspiration, quality])
    return view_core + quality_core, view_extra + quality_extra + [views]


# ---------------------------------------------------------------- stage 2

_ABSENT_DETAILS = {
    "pleural_effusion": "There is no pleural effusion.",
    "pneumothorax": "There is no pneumothorax.",
    "consolidation": "There is no consolidation.",
    "nodule": "No lung nodule is seen.",
    "cardiomegaly": "The heart is not enlarged.",
    "support_devices": "No tubes or lines are seen.",
}


def _presence(rng, kind: str, finding: Finding | None) -> Turn:
    detail = finding_sentence(finding, rng) if finding else _ABSENT_DETAILS[kind]
    question = pick(rng, PRESENCE_QUESTIONS[kind])
    return _yes_no(rng, 2, "Findings_Identification", question, finding is not None, detail, f"finding:{kind}", kind)


def _stage2(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    exam = truth.current
    present = list(exam.findings)
    absent = [KINDS[i] for i in rng.permutation(len(KINDS)) if KINDS[i] not in exam.kinds]
    n_absent = min(len(absent), len(present) if present else 2)  # balanced yes/no
    asked = [_presence(rng, f.kind, f) for f in present]
    asked += [_presence(rng, kind, None) for kind in absent[:n_absent]]
    # Asked in random order: the position of a question must not reveal its answer.
    core = [asked[i] for i in rng.permutation(len(asked))]
    extra = [_presence(rng, kind, None) for kind in absent[n_absent:]]
    core.append(_which_findings(truth, rng))
    extra += _normality_turns(truth, rng)
    return core, extra


def _which_findings(truth: StudyTruth, rng) -> Turn:
    exam = truth.current
    n_options = max(len(exam.findings), int(rng.integers(3, 6)))
    others = [k for k in KINDS if k not in exam.kinds]
    others = [others[i] for i in rng.permutation(len(others))]
    kinds = list(exam.kinds) + others[: n_options - len(exam.kinds)]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    options = [NAMES[k] for k in kinds] + ["none of the above"]
    correct = [NAMES[k] for k in exam.kinds] or ["none of the above"]
    stem = pick(rng, (
        "Which of the following findings are present?",
        "Which findings can be identified on this radiograph?",
        "Select every finding seen on this chest X-ray.",
    ))
    return _multi_choice(rng, 2, "Findings_Identification", stem, options, correct, "findings")


def _normality_turns(truth: StudyTruth, rng) -> list[Turn]:
    exam = truth.current
    lung_kinds = ("pleural_effusion", "pneumothorax", "consolidation", "nodule")
    clear = not any(k in exam.kinds for k in lung_kinds)
    positives = [describe(f) for f in exam.findings if f.kind in lung_kinds]
    turns = [_yes_no(
        rng, 2, "Findings_Identification",
        pick(rng, ("Are the lungs clear?", "Are both lungs clear of any abnormality?")),
        clear, "The lungs are clear." if clear else f"There is {positives[0]}.", "lungs_clear",
    )]
    effusion = exam.finding("pleural_effusion")
    side = pick(rng, ("right", "left"))
    sharp = effusion is None or side not in effusion.sides
    turns.append(_yes_no(
        rng, 2, "Findings_Identification", f"Is the {side} costophrenic angle sharp?", sharp,
        f"The {side} costophrenic angle is sharp." if sharp else f"It is blunted by {describe(effusion)}.",
        f"costophrenic:{side}",
    ))
    normal_heart = exam.finding("cardiomegaly") is None
    turns.append(_yes_no(
        rng, 2, "Findings_Identification",
        pick(rng, ("Is the heart size normal?", "Is the cardiac silhouette normal in size?")),
        normal_heart, "The heart size is normal." if normal_heart else "The heart is enlarged.", "heart_size",
    ))
    described = " and ".join(describe(f) for f in exam.findings)
    turns.append(_caption(
        2, "Findings_Identification",
        pick(rng, ("What are the notable findings on this chest X-ray?",
                   "Please review the chest X-ray for any abnormalities or devices.")),
        f"The radiograph shows {described}." if described else "No abnormality or device is seen; the lungs are clear.",
        "findings_caption",
    ))
    return turns


# ---------------------------------------------------------------- stage 3

def _attribute_turns(f: Finding, rng) -> list[Turn]:
    """Attribute questions about one present finding (single-choice and captioning)."""
    name = NAMES[f.kind]
    kind = f.kind
    turns: list[Turn] = []

    def choice(attribute: str, stem: str, options: list[str], correct: str) -> None:
        turns.append(_choice(rng, 3, "Attributes_Description", stem, options, correct, f"attribute:{kind}:{attribute}", kind))

    if kind in ("pleural_effusion", "pneumothorax", "consolidation", "nodule"):
        sides = ["right", "left", "bilateral"] if kind == "pleural_effusion" else ["right", "left"]
        choice("side", pick(rng, (f"On which side is the {name}?", f"Which side does the {name} involve?")), sides, f.side)
    if f.size and kind != "cardiomegaly":
        choice("size", pick(rng, (f"How large is the {name}?", f"What is the size of the {name}?")), ["small", "large"], f.size)
    if f.zone:
        choice("zone", pick(rng, (f"In which lung zone is the {name}?", f"Which zone of the lung contains the {name}?")),
               ["upper", "middle", "lower"], f.zone)
    if kind == "cardiomegaly":
        choice("degree", pick(rng, ("How enlarged is the heart?", "What is the degree of cardiomegaly?")),
               ["mild", "marked"], f.size)
    if kind == "support_devices":
        both = "endotracheal tube and central venous catheter"
        present = both if len(f.devices) == 2 else f.devices[0]
        choice("devices", pick(rng, ("Which support devices are present?", "Which tubes or lines are seen?")),
               ["endotracheal tube", "central venous catheter", both], present)
    turns.append(_caption(3, "Attributes_Description", _describe_question(f, rng), _description(f),
                          f"attribute:{kind}:description", kind))
    return turns


def _describe_question(f: Finding, rng) -> str:
    name = NAMES[f.kind]
    if f.kind == "cardiomegaly":
        return pick(rng, ("Describe the cardiac silhouette.", "How would you describe the heart size?"))
    return pick(rng, (f"Describe the {name}.", f"How would you describe the {name} in this X-ray?",
                      f"What are the characteristics of the {name}?"))


def _description(f: Finding) -> str:
    """Stage-3 description of a present finding."""
    text = describe(f)
    cap = text[:1].upper() + text[1:]
    if f.kind == "pleural_effusion":
        where = "both costophrenic angles" if f.side == "bilateral" else f"the {f.side} costophrenic angle"
        if f.size == "small":
            verb = "blunt" if f.side == "bilateral" else "blunts"
            return f"{cap} {verb} {where}."
        return f"{cap} {'opacify' if f.side == 'bilateral' else 'opacifies'} the lung bases, with a meniscus along the chest wall and loss of {where}."
    if f.kind == "pneumothorax":
        return f"{cap}: a visceral pleural line is visible, with no lung markings peripheral to it."
    if f.kind == "consolidation":
        return f"There is an ill-defined airspace opacity in the {location(f)}, consistent with consolidation."
    if f.kind == "nodule":
        return f"{cap}: a well-defined round opacity."
    if f.kind == "cardiomegaly":
        ratio = round(f.extent * 20) / 20
        return f"The cardiac silhouette is enlarged, with a cardiothoracic ratio of about {ratio:.2f}, consistent with {f.size} cardiomegaly."
    return f"{cap} {'are' if len(f.devices) > 1 else 'is'} present."


def _detection(truth: StudyTruth, f: Finding, rng) -> Turn:
    name = NAMES[f.kind]
    boxes = [r.box for r in truth.regions_of(f.kind)]
    question = pick(rng, (f"Locate the {name} in the image.", f"Where is the {name}? Give its bounding box.",
                          f"Detect the {name} and provide bounding box coordinates."))
    return Turn(3, "Findings_Detection", "detection", question, format_boxes(boxes), f"detect:{f.kind}", f.kind)


def _stage3(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    core: list[Turn] = []
    extra: list[Turn] = []
    for f in truth.current.findings:
        attribute_core, attribute_extra = _split(rng, _attribute_turns(f, rng))
        core += attribute_core + [_detection(truth, f, rng)]
        extra += attribute_extra
    if len(truth.current.findings) >= 2:
        boxes = [r.box for r in truth.regions]
        question = pick(rng, ("Detect all abnormalities and devices in this X-ray.",
                              "Provide bounding boxes for every finding on this radiograph."))
        extra.append(Turn(3, "Findings_Detection", "detection", question, format_boxes(boxes), "detect:all"))
    return core, extra


# ---------------------------------------------------------------- stage 4

def _stage4(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    exam = truth.current
    pathologies = [f for f in exam.findings if f.kind in PATHOLOGIES]
    if not pathologies:
        return [], []
    turns = _relationship_questions(truth, rng)
    turns.append(_caption(
        4, "Relationships_Analysis",
        pick(rng, ("What are the relationships among the findings in this chest X-ray?",
                   "How are the findings on this radiograph related?")),
        _relationship_summary(truth), "relations",
    ))
    return _split(rng, turns)


def _relationship_questions(truth: StudyTruth, rng) -> list[Turn]:
    exam = truth.current
    effusion, heart = exam.finding("pleural_effusion"), exam.finding("cardiomegaly")
    consolidation, nodule = exam.finding("consolidation"), exam.finding("nodule")
    pneumothorax, devices = exam.finding("pneumothorax"), exam.finding("support_devices")
    turns = []
    if effusion is not None:
        detail = (
            "Pleural effusion with cardiomegaly suggests congestive heart failure."
            if heart else "The heart is not enlarged, so a cardiac cause is less likely."
        )
        turns.append(_yes_no(rng, 4, "Relationships_Analysis",
                             "Could the pleural effusion be related to an enlarged heart?",
                             heart is not None, detail, "relation:effusion_heart", "pleural_effusion"))
    elif heart is not None:
        turns.append(_yes_no(rng, 4, "Relationships_Analysis",
                             "Is the enlarged heart accompanied by pleural effusions suggesting decompensation?",
                             False, "The heart is enlarged, but there is no pleural effusion.",
                             "relation:effusion_heart", "cardiomegaly"))
    if effusion is not None and consolidation is not None:
        same = consolidation.side in effusion.sides
        detail = (
            "Consolidation with an ipsilateral effusion suggests a parapneumonic effusion."
            if same else f"The consolidation is on the {consolidation.side} and the effusion on the {effusion.side}."
        )
        turns.append(_yes_no(rng, 4, "Relationships_Analysis",
                             "Is the pleural effusion on the same side as the consolidation?",
                             same, detail, "relation:effusion_consolidation", "consolidation"))
    if nodule is not None and consolidation is not None:
        same = nodule.side == consolidation.side
        turns.append(_yes_no(rng, 4, "Relationships_Analysis",
                             "Are the nodule and the consolidation in the same lung?",
                             same, f"The nodule is in the {location(nodule)} and the consolidation in the {location(consolidation)}.",
                             "relation:nodule_consolidation", "nodule"))
    if pneumothorax is not None and devices is not None and devices.side:
        same = devices.side == pneumothorax.side
        detail = (
            "The pneumothorax is on the side of the central line, raising concern for a procedural complication."
            if same else "The central line is on the opposite side."
        )
        turns.append(_yes_no(rng, 4, "Relationships_Analysis",
                             "Could the pneumothorax be a complication of the central venous catheter insertion?",
                             same, detail, "relation:pneumothorax_line", "pneumothorax"))
    return turns


def _relationship_summary(truth: StudyTruth) -> str:
    exam = truth.current
    effusion, heart = exam.finding("pleural_effusion"), exam.finding("cardiomegaly")
    consolidation, pneumothorax = exam.finding("consolidation"), exam.finding("pneumothorax")
    devices = exam.finding("support_devices")
    sentences = []
    if effusion and heart:
        sentences.append("The pleural effusion together with cardiomegaly suggests congestive heart failure.")
    if effusion and consolidation and consolidation.side in effusion.sides:
        sentences.append("The effusion is ipsilateral to the consolidation, suggesting a parapneumonic effusion.")
    if pneumothorax and devices and devices.side == pneumothorax.side:
        sentences.append("The pneumothorax is ipsilateral to the central line, suggesting a procedural complication.")
    if not sentences:
        listed = [describe(f) for f in exam.findings if f.kind in PATHOLOGIES]
        if len(listed) == 1:
            return f"There is {listed[0]}, with no other finding to relate it to."
        return f"There is {' and '.join(listed)}; these findings are not directly related."
    return " ".join(sentences)


# ---------------------------------------------------------------- stages 5 and 6

_CHANGE_OPTIONS = {"new": "new", "resolved": "resolved", "larger": "increased", "smaller": "decreased", "unchanged": "unchanged"}
_DEVICE_CHANGE_OPTIONS = {"new": "new", "resolved": "removed", "unchanged": "unchanged"}


def _shown(kind: str, *exams) -> Finding:
    """The finding as seen on the first exam that has it."""
    for exam in exams:
        f = exam.finding(kind)
        if f is not None:
            return f
    raise ValueError(f"phantom: {kind} listed as changed but absent from both exams")


def _stage5(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    if truth.prior is None:
        return [], []
    changes = dict(truth.changes_from_prior)
    sentences = [change_phrase(k, c, _shown(k, truth.current, truth.prior)) for k, c in changes.items()]
    caption = _caption(
        5, "Differences_Comparison",
        pick(rng, ("Compared with the prior radiograph, what has changed?",
                   "What changes can be observed between the current and the prior chest X-ray?",
                   "Describe the interval change since the previous study.")),
        " ".join(sentences) if sentences else "There is no interval change; both radiographs are clear.",
        "change:all",
    )
    choices = []
    for kind, change in changes.items():
        table = _DEVICE_CHANGE_OPTIONS if kind == "support_devices" else _CHANGE_OPTIONS
        stem = pick(rng, (f"How has the {NAMES[kind]} changed since the prior study?",
                          f"Compared with the reference image, the {NAMES[kind]} is:"))
        choices.append(_choice(rng, 5, "Differences_Comparison[Choice]", stem, list(table.values()), table[change],
                               f"change:{kind}", kind))
    any_new = any(c == "new" and k in PATHOLOGIES for k, c in changes.items())
    new_turn = _yes_no(
        rng, 5, "Differences_Comparison",
        pick(rng, ("Is there any new abnormality compared with the prior study?",
                   "Has a new finding appeared since the previous radiograph?")),
        any_new, "No new abnormality has appeared." if not any_new else
        " ".join(change_phrase(k, c, _shown(k, truth.current)) for k, c in changes.items() if c == "new" and k in PATHOLOGIES),
        "change:new",
    )
    choice_core, choice_extra = _split(rng, choices)
    return [caption] + choice_core, choice_extra + [new_turn]


def _stage6(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    if truth.later is None:
        return [], []
    changes = dict(truth.changes_to_later)
    sentences = [trend_phrase(k, c, _shown(k, truth.later, truth.current)) for k, c in changes.items()]
    caption = _caption(
        6, "Future_Trend_Analysis",
        pick(rng, ("How do the findings evolve on the follow-up radiograph?",
                   "Based on the follow-up image, what is the trend of the findings?",
                   "What does the later radiograph show about the course of the disease?")),
        " ".join(sentences) if sentences else "The follow-up radiograph remains clear, with no new abnormality.",
        "trend:all",
    )
    turns = [caption]
    for kind, change in changes.items():
        options = ["removed", "stable", "new"] if kind == "support_devices" else ["improved", "worsened", "stable", "resolved", "new"]
        stem = pick(rng, (f"On the follow-up image, how has the {NAMES[kind]} evolved?",
                          f"What is the trend of the {NAMES[kind]} on the later radiograph?"))
        turns.append(_choice(rng, 6, "Future_Trend_Analysis", stem, options, trend_word(kind, change),
                             f"trend:{kind}", kind))
    any_new = any(c == "new" and k in PATHOLOGIES for k, c in changes.items())
    turns.append(_yes_no(
        rng, 6, "Future_Trend_Analysis",
        "Does the follow-up radiograph show any new abnormality?", any_new,
        "A new abnormality has developed." if any_new else "No new abnormality has developed.", "trend:new",
    ))
    return _split(rng, turns)


# ---------------------------------------------------------------- stages 7 and 8

def _stage7(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    findings = truth.current.findings
    caption = _caption(
        7, "Diagnosis_Advice",
        pick(rng, ("Offer recommendations based on the chest X-ray analysis.",
                   "What would you recommend as the next steps for this patient?",
                   "What further management or imaging is advised?")),
        advice_sentence(findings), "advice",
    )
    steps = sorted(next_step(f) for f in findings)
    correct = steps[0][1] if steps else NO_ACTION
    distractors = [step for step in NEXT_STEPS if step != correct]
    distractors = [distractors[i] for i in rng.permutation(len(distractors))[:3]]
    urgent = _choice(
        rng, 7, "Diagnosis_Advice",
        pick(rng, ("What is the most appropriate next step?", "Which action is the most urgent?")),
        distractors + [correct], correct, "advice:next_step",
    )
    return [caption], [urgent]


def _report_parts(truth: StudyTruth, rng) -> tuple[str, str]:
    """(findings section, impression) of the reference report."""
    exam = truth.current
    acq = exam.acquisition
    sentences = [technique_sentence(acq, truth.has_lateral)]
    if acq.low_inspiration:
        sentences.append("Low lung volumes.")
    if acq.rotated:
        sentences.append("The patient is rotated.")
    sentences += [finding_sentence(f, rng) for f in exam.findings]
    sentences += negative_sentences(exam, rng)
    changes = dict(truth.changes_from_prior) if truth.prior is not None else {}
    impressions = []
    for f in exam.findings:
        if f.kind not in PATHOLOGIES:
            continue
        text = describe(f).removeprefix("a ")
        change = changes.get(f.kind)
        if change in ("larger", "smaller", "unchanged", "new"):
            text += {"larger": ", increased since the prior study", "smaller": ", decreased since the prior study",
                     "unchanged": ", unchanged from the prior study", "new": ", new since the prior study"}[change]
        impressions.append(text[:1].upper() + text[1:] + ".")
    if not impressions:
        impressions.append("No acute cardiopulmonary process.")
    return " ".join(sentences), " ".join(impressions)


def _stage8(truth: StudyTruth, rng) -> tuple[list[Turn], list[Turn]]:
    findings, impression = _report_parts(truth, rng)
    full = _caption(8, "Report_Generation",
                    pick(rng, ("Write the radiology report for this chest X-ray.",
                               "Generate a complete report with findings and impression.")),
                    f"FINDINGS: {findings} IMPRESSION: {impression}", "report")
    findings_only = _caption(8, "Report_Generation[Findings]",
                             pick(rng, ("Write the findings section of the report.",
                                        "Describe the findings of this radiograph as in a report.")),
                             findings, "report:findings")
    impression_only = _caption(8, "Report_Generation[Impression]",
                               pick(rng, ("Final impression: _____.", "What is the impression of this study?")),
                               impression, "report:impression")
    return _split(rng, [full, findings_only, impression_only])


# ---------------------------------------------------------------- assembly

_STAGES = (_stage1, _stage2, _stage3, _stage4, _stage5, _stage6, _stage7, _stage8)


def _order_key(turn: Turn, index: int, truth: StudyTruth, order: str) -> tuple:
    """Sort key: stage order; with "by_finding", a present finding's stage-2
    question is followed directly by its stage-3 questions."""
    if order == "by_finding" and turn.stage in (2, 3) and turn.finding in truth.current.kinds:
        return (2, KINDS.index(turn.finding), 0, turn.stage, index)
    if order == "by_finding" and turn.stage in (2, 3):
        return (2, len(KINDS), turn.stage, 0, index)
    return (turn.stage, 0, 0, 0, index)


def build_turns(truth: StudyTruth, rng: np.random.Generator, config: PhantomConfig) -> list[Turn]:
    """All turns of a study: the core turns of every stage, then optional turns
    (chosen at random) up to a target drawn from `config.turns_per_study`,
    ordered by `config.turn_order`."""
    core: list[Turn] = []
    optional: list[Turn] = []
    for stage in _STAGES:
        stage_core, stage_optional = stage(truth, rng)
        core += stage_core
        optional += stage_optional
    low, high = config.turns_per_study
    target = int(rng.integers(low, high + 1))
    chosen = [optional[i] for i in sorted(rng.permutation(len(optional))[: max(0, target - len(core))])]
    turns = core + chosen
    keyed = sorted(range(len(turns)), key=lambda i: _order_key(turns[i], i, truth, config.turn_order))
    return [turns[i] for i in keyed]


_INTRODUCTIONS = {
    "current": (
        "Here is the current X-ray image: {images} . {question}",
        "{question} Current X-ray: {images} .",
        "The X-ray taken at this time is shown below: {images} . {question}",
        "{images}\n{question}",
    ),
    "prior": (
        "{question} Reference X-ray: {images} .",
        "Prior radiograph: {images} . {question}",
        "{question} The previous study is shown here: {images} .",
    ),
    "later": (
        "A follow-up radiograph is provided: {images} . {question}",
        "{question} Later X-ray: {images} .",
        "Follow-up image: {images} . {question}",
    ),
}


def introduce_images(question: str, which: str, count: int, rng: np.random.Generator) -> str:
    """`question` with `count` image placeholders introducing the `which`
    ("current", "prior" or "later") images."""
    images = " ".join([IMAGE_PLACEHOLDER] * count)
    return pick(rng, _INTRODUCTIONS[which]).format(images=images, question=question)
