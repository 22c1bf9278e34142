"""A test fixture: phantom studies whose stage-2 and stage-3 turns are worded the way the authors' release words them.

The phantom asks its findings in its own few wordings ("Is there a pleural effusion?"). The
released CXRTrek files word them many ways (CXRTrek public sample, guanjinquan/CXRTrekReasoner
dataset/train_swift_demo.json): confirmatory ("Can you confirm the presence of X in the X-ray?"),
negated ("Is the lung free of X?", "Can you confirm the absence of X?"), hedged ("any evidence
of", "a possible X"), with format hints ("Answer with yes or no only."), wrapped ("Reply to '...'
with just the answer, nothing else."), as Yes/No choices in several layouts ("Mark the most
appropriate response: A. No. or B. Yes." answered "B. Yes."), with long answers that say where
("Yes. There is a small right pleural effusion at the right costophrenic angle."), and stage 3
asks about some of the findings, not all of them.

`released_wording_study(seed, index, config)` rewrites phantom study `index`: every stage-2
presence turn (`phantom_key` "finding:<kind>") gets one of `STAGE2_FORMS`, its answer decided by
the phantom's truth (`cxrtrek_extras["phantom_truth"]`, left in place, as are the turns'
`phantom_key`s; each rewritten turn also records its form in `extras["wording"]`); stage 3 keeps
the turns of a random part of the present findings (never all of two or more) and asks the
location of each kept one in the authors' words. `released_wording_studies(count, seed)` is the
first `count` such studies; `write_released_wording(root, count, seed)` writes them as a release
is laid out (PNGs under root/images, root/released.json in the released form; root is the image root).

The wording is a test fixture, not data: the forms are few and drawn uniformly, and nothing is
said about how often each occurs in the release.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import numpy as np
from PIL import Image

from data_pipeline.files.cxrtrek_json import add_released_fields, study_to_element
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.schema.findings import PRESENCE_QUESTIONS
from data_pipeline.schema.records import QAItem, Study, freeze, thaw

__all__ = [
    "FIXTURE_CONFIG",
    "STAGE2_FORMS",
    "Stage2Form",
    "finding_truth",
    "released_wording_studies",
    "released_wording_study",
    "write_released_wording",
]

FIXTURE_CONFIG = PhantomConfig(size=64, turns_per_study=(16, 22))

# The names the authors' questions use for each phantom finding kind (each a name of the whole kind).
_NAMES = {
    "support_devices": ("support devices", "medical equipment or devices", "tubes or lines", "treatment devices"),
    "cardiomegaly": ("cardiomegaly", "cardiac enlargement"),
    "pleural_effusion": ("pleural effusion", "pleural effusions", "effusion"),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation",),
    "nodule": ("lung nodule", "pulmonary nodule", "nodule"),
}
_LUNG_KINDS = ("pleural_effusion", "pneumothorax", "consolidation", "nodule")
_YES_NO_HINTS_BEFORE = ("Choose between yes or no: ", "Pick yes or no: ", "Select either yes or no: ",
                        "Please answer the question only in yes/no: ", "Answer the question with only yes or no: ",
                        "Respond with either yes or no: ")
_YES_NO_HINTS_AFTER = (" Answer with yes or no only.", " Respond with yes or no only.")


@dataclasses.dataclass(frozen=True)
class Stage2Form:
    """One way the release asks whether a finding is present.

    name: recorded in the turn's `extras["wording"]`.
    question: "{x}" is the finding's name (`_NAMES`), "{side}" a patient side (localised forms),
        "{where}" "lung" (lung findings) or "X-ray"; "" = any of the positive stems, drawn per turn.
    negated: the question asks for the finding's absence ("Yes." = absent).
    layout: "yes_no" (answered "Yes."/"No.") or a choice layout of `_CHOICE_LAYOUTS`.
    localised: the question names a side, so its "No." does not say the finding is absent
        anywhere; asked only of lung findings.
    """

    name: str
    question: str
    negated: bool = False
    layout: str = "yes_no"
    localised: bool = False


# Question stems, verbatim in form from the public sample (finding names substituted).
_POSITIVE = (
    "Can you confirm the presence of {x} in the X-ray?",
    "Can you ascertain whether {x} is present in the X-ray?",
    "Is {x} evident in the X-ray?",
    "Is there any evidence of {x} in the main study X-ray?",
    "Are the signs pointing towards a possible {x}?",
    "Are there any abnormalities suggesting {x} in the X-ray?",
    "Do you find {x} in the X-ray image?",
    "Can you spot {x} in the main study X-ray?",
    "Does this X-ray show evidence of {x}?",
)
_NEGATED = (
    "Is the {where} free of {x}?",
    "Can you confirm the absence of {x} in the X-ray?",
)
# Yes/No option layouts: (template with {q} the question, qtype, options in order, answer style).
_CHOICE_LAYOUTS = {
    "reply_to": ("Reply to '{q} Mark the most appropriate response: A. No. or B. Yes.' with just the answer, "
                 "nothing else.", "single-choice", ("No", "Yes"), "letter_text"),
    "bracketed": ("{q} Select the correct answer from the options below: [ A. No. or B. Yes. ]. Respond to "
                  "question with the answer only, no explanation.", "single-choice", ("No", "Yes"), "letter_text"),
    "lines": ("Give only the answer to: {q} Check every valid option: A. No.\nB. Yes.", "multi-choice-2",
              ("No", "Yes"), "letter_text"),
    "correct_option": ("Only provide the answer for: {q} The correct option is: A. Yes. or B. No.", "multi-choice-2",
                       ("Yes", "No"), "letter"),
    "numbered": ("Please only output the answer for the question: {q} Select the correct answer from the options "
                 "below: 1. No. or 2. Yes.", "single-choice", ("No", "Yes"), "letter_text"),
    "bare": ("{q} Only one answer is valid: [ Yes. or No. ]. Respond to question with the answer only, no "
             "explanation.", "single-choice", ("Yes", "No"), "text"),
}
STAGE2_FORMS: tuple[Stage2Form, ...] = (
    *(Stage2Form(f"positive_{i}", q) for i, q in enumerate(_POSITIVE)),
    *(Stage2Form(f"negated_{i}", q, negated=True) for i, q in enumerate(_NEGATED)),
    *(Stage2Form(f"choice_{layout}", "", layout=layout) for layout in _CHOICE_LAYOUTS),
    Stage2Form("choice_negated", _NEGATED[1], negated=True, layout="reply_to"),
    Stage2Form("localised", "Is there any evidence of {x} in the {side} lung?", localised=True),
)


def finding_truth(study: Study) -> dict[str, dict]:
    """finding kind -> its truth record (side, zone, size, devices) for the study's current image."""
    return {f["kind"]: f for f in thaw(study.cxrtrek_extras["phantom_truth"]["current"]["findings"])}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _describe(finding: dict) -> str:
    """"a small right pleural effusion at the right costophrenic angle": the finding and where it is."""
    kind, side, size = finding["kind"], finding.get("side", ""), finding.get("size", "")
    if kind == "pleural_effusion":
        where = "both costophrenic angles" if side == "bilateral" else f"the {side} costophrenic angle"
        noun = "bilateral pleural effusions" if side == "bilateral" else f"{side} pleural effusion"
        return f"{'' if side == 'bilateral' else 'a '}{size} {noun} at {where}"
    if kind == "pneumothorax":
        return f"a {size} {side} pneumothorax at the {side} lung apex"
    if kind in ("consolidation", "nodule"):
        noun = "consolidation" if kind == "consolidation" else f"a {size} nodule"
        return f"{noun} in the {side} {finding['zone']} lung zone"
    if kind == "cardiomegaly":
        return f"{size} cardiomegaly with an enlarged cardiac silhouette"
    return " and ".join(f"a {d}" if d.startswith("c") else f"an {d}" for d in finding["devices"]) + " in place"


def _absent_sentence(kind: str, name: str, rng: np.random.Generator) -> str:
    return _pick(rng, (f"There is no evidence of {name} on the X-ray.", f"No {name} is present on the X-ray.",
                       f"There is no {name} seen."))


def _yes_no_answer(says_yes: bool, kind: str, name: str, finding: dict | None, long: bool, rng) -> str:
    """"Yes."/"No.", or with a sentence that agrees with the truth (`finding` None: absent)."""
    word = "Yes." if says_yes else "No."
    if not long:
        return word
    detail = f"There is {_describe(finding)}." if finding else _absent_sentence(kind, name, rng)
    return f"{word} {detail}"


def _choice_answer(layout: str, says_yes: bool) -> str:
    _, _, options, style = _CHOICE_LAYOUTS[layout]
    keys = "12" if layout == "numbered" else "AB"
    text = "Yes" if says_yes else "No"
    key = keys[options.index(text)]
    return {"letter_text": f"{key}. {text}.", "letter": f"{key}.", "text": f"{text}."}[style]


def _stage2_turn(item: QAItem, kind: str, finding: dict | None, rng: np.random.Generator) -> QAItem:
    """`item` (a phantom presence turn) asked in one of `STAGE2_FORMS` and answered by the truth."""
    forms = [f for f in STAGE2_FORMS if not f.localised or kind in _LUNG_KINDS]
    form = _pick(rng, forms)
    name = _pick(rng, _NAMES[kind])
    side = _pick(rng, ("right", "left"))
    present = finding is not None and (not form.localised or finding.get("side") in (side, "bilateral"))
    stem = form.question or _pick(rng, _POSITIVE)
    question = stem.format(x=name, side=side, where="lung" if kind in _LUNG_KINDS else "X-ray")
    says_yes = present != form.negated
    if form.layout == "yes_no":
        hint = int(rng.integers(3))  # 0: none, 1: before, 2: after
        if hint == 1:
            question = _pick(rng, _YES_NO_HINTS_BEFORE) + question
        elif hint == 2:
            question += _pick(rng, _YES_NO_HINTS_AFTER)
        long = hint == 0 and rng.random() < 0.7
        answer = _yes_no_answer(says_yes, kind, name, finding if present else None, long, rng)
        qtype = "yes_no"
    else:
        template, qtype, _, _ = _CHOICE_LAYOUTS[form.layout]
        question = template.format(q=question)
        answer = _choice_answer(form.layout, says_yes)
    # The phantom's wording is replaced where it stands, keeping an image introduction around it.
    phantom_stem = next(q for q in PRESENCE_QUESTIONS[kind] if q in item.question)
    question = item.question.replace(phantom_stem, question)
    extras = freeze({**thaw(item.extras), "wording": form.name})
    return dataclasses.replace(item, qtype=qtype, question=question, answer=answer, extras=extras)


_LOCATION_QUESTIONS = (
    "Where is the {x} located anatomically, beyond just identifying its general area? Limit to 20 words maximum.",
    "Could you specify the location of the {x} observed in the chest X-ray image? Keep it brief and focused:",
)


def _location_turn(after: QAItem, finding: dict, rng: np.random.Generator) -> QAItem:
    """A stage-3 captioning turn asking where a present lung finding is."""
    kind, side = finding["kind"], finding.get("side", "")
    effusion_where = "both costophrenic angles" if side == "bilateral" else f"the {side} costophrenic angle"
    where = {"pleural_effusion": effusion_where,
             "pneumothorax": f"the {side} lung apex"}.get(kind, f"the {side} {finding.get('zone', '')} lung zone")
    name = _NAMES[kind][0]
    return QAItem(3, "Attributes_Description", "captioning", after.image_input_count,
                  _pick(rng, _LOCATION_QUESTIONS).format(x=name), f"The {name} is located at {where}.",
                  freeze({"phantom_key": f"attribute:{kind}:location", "wording": "location"}))


def _kept_stage3_kinds(present: list[str], rng: np.random.Generator) -> set[str]:
    """The present findings stage 3 still asks about: some, never all of two or more."""
    if len(present) <= 1:
        return set(present) if rng.random() < 0.5 else set()
    keep = int(rng.integers(1, len(present)))
    return {present[i] for i in rng.permutation(len(present))[:keep]}


def _stage3_kind(item: QAItem) -> str | None:
    key = str(item.extras.get("phantom_key", ""))
    parts = key.split(":")
    return parts[1] if parts[0] in ("attribute", "detect") and len(parts) >= 2 and parts[1] != "all" else None


def released_wording_study(seed: int, index: int, config: PhantomConfig = FIXTURE_CONFIG
                           ) -> tuple[Study, dict[str, np.ndarray]]:
    """Phantom study `index` of `seed` with its stage-2/3 turns in the release's wording (module
    docstring), and its images (relative path -> float32[size, size] in [0, 1])."""
    study, images = generate_study(seed, index, config)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 2024]))
    truth = finding_truth(study)
    present = [kind for kind in truth]
    kept = _kept_stage3_kinds(present, rng)
    items: list[QAItem] = []
    for item in study.items:
        key = str(item.extras.get("phantom_key", ""))
        if item.stage == 2 and key.startswith("finding:"):
            kind = key.split(":", 1)[1]
            items.append(_stage2_turn(item, kind, truth.get(kind), rng))
            continue
        kind = _stage3_kind(item) if item.stage == 3 else None
        if kind is not None and kind not in kept:
            continue
        items.append(item)
        if kind is not None and kind in kept and kind in _LUNG_KINDS and key.startswith("detect:"):
            items.append(_location_turn(item, truth[kind], rng))
    extras = freeze({**thaw(study.cxrtrek_extras), "stage3_kinds": sorted(kept)})
    return study.replace(items=tuple(items), cxrtrek_extras=extras), images


def released_wording_studies(count: int, seed: int = 0, config: PhantomConfig = FIXTURE_CONFIG) -> list[Study]:
    """The first `count` studies of `released_wording_study(seed, ...)` (images not rendered to files)."""
    return [released_wording_study(seed, index, config)[0] for index in range(count)]


def write_released_wording(root: str | pathlib.Path, count: int, seed: int = 0,
                           config: PhantomConfig = FIXTURE_CONFIG) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes root/images/<pat_id>/<study_id>/*.png and root/released.json (the released form:
    messages, absolute `image` paths, `data_dict.cxrtrek_data`); returns (JSON path, image root)."""
    root = pathlib.Path(root)
    elements = []
    for index in range(count):
        study, images = released_wording_study(seed, index, config)
        for relative, image in images.items():
            path = root / relative  # the phantom's paths start with "images/"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
        study = add_released_fields(study, root)
        elements.append(study_to_element(study, "released"))
    path = root / "released.json"
    path.write_text(json.dumps(elements, indent=1), encoding="utf-8")
    return path, root

