"""Stage 3, attributes of the present findings (location, severity, type, a description) and, where
boxes are given, detection.

Attributes come only from what the report states about a finding it calls present: location
from its side and zone/lobe words, severity from its severity or size word, type from a
qualifier in its naming phrase ("platelike atelectasis", "loculated effusion"). Choice
distractors are the other values of the same attribute (the opposite side, the other grades of
one scale); nothing is asked about an attribute the report leaves unsaid.

Detection items exist only for images with boxes (`--boxes`, a VinDr-CXR-style CSV in pixels):
`boxes_on_scale` puts pixel corners on the released 0-100 grid (x / width * 100, y / height *
100) and the answer is written in the box grammar (`schema.boxes.format_boxes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from data_pipeline.construct.box_annotations import PixelBox
from data_pipeline.construct.finding_summary import (
    PRESENT, FindingSummary, describe_finding, location_text, summarise_findings,
)
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import Provenance, StageResult, choice_item, cite, qa_item, yes_no_item
from data_pipeline.construct.stage_questions import Wording, capitalise, caption_hint
from data_pipeline.schema.boxes import Box, format_boxes

__all__ = ["SEVERITY_SCALES", "TYPE_WORDS", "boxes_on_scale", "stage3_items"]

STAGE = 3
TASK, DETECTION_TASK = "Attributes_Description", "Findings_Detection"
# Ordered grades; a severity word is asked about among the grades of its own scale.
SEVERITY_SCALES = (("trace", "small", "moderate", "large"), ("minimal", "mild", "moderate", "severe"))
# Qualifiers that name a finding's type when they stand in its naming phrase.
TYPE_WORDS = ("platelike", "plate-like", "linear", "streaky", "patchy", "subsegmental", "segmental", "lobar",
              "interstitial", "airspace", "alveolar", "reticular", "reticulonodular", "nodular", "calcified",
              "loculated", "layering", "focal", "multifocal", "compressive", "hilar", "perihilar", "tension",
              "hydropneumothorax", "spiculated", "cavitary", "compression", "healed", "displaced")
_SIDES = ("right", "left", "bilateral")
_LOCATION_CAPTIONS = ("Where is the {f} located?", "Which anatomical region shows the {f} on the chest X-ray?",
                      "Provide an analysis of the {f}'s location as depicted in the X-ray image.")
_LOCATION_STEMS = ("Where is the {f} located?", "Location of {f}: ______", "Which region does the {f} involve?")
_LOCATION_YES_NO = ("Is the {f} located {at}?", "Is it correct to state that the X-ray shows the {f} {at}?",
                    "Can you confirm the presence of {f} {at}?")
_SEVERITY_CAPTIONS = ("How severe is the {f}?", "What is the severity of the {f}?", "How large is the {f}?")
_SIZE_CAPTION = "What is the size of the {f}?"
_TYPE_CAPTIONS = ("What type of {f} is described?", "How would you characterise the {f}?")
_DESCRIPTION_CAPTIONS = ("What is the complete description of the {f} in the image?",
                         "How would you describe the {f} in this X-ray?", "Describe the {f} seen on this radiograph.")
_DETECTION_FORMAT = "in the format <|box|>(x1, y1), (x2, y2)<|/box|>."
_DETECTION_STEMS = ("Locate this phrase: {c} in the X-ray, output bounding box(s) " + _DETECTION_FORMAT,
                    "Output the area where the {c} is located in the X-ray image, " + _DETECTION_FORMAT,
                    "Draw bounding box(s) for this phrase: {c} in the X-ray " + _DETECTION_FORMAT)
_CHANGE_CLAUSES = {"new": "new since the prior study", "increased": "increased since the prior study",
                   "decreased": "decreased since the prior study", "unchanged": "unchanged from the prior study",
                   "resolved": "resolved", "improved": "improved since the prior study",
                   "worsened": "worse than on the prior study"}


def boxes_on_scale(image: str, boxes: Sequence[PixelBox], width: int, height: int) -> tuple[Box, ...]:
    """Pixel boxes of one image -> `Box`es on the 0-100 scale, labelled with the class name.

    ValueError naming the image and class for a box that leaves the image (width x height pixels).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"{image}: image size must be positive, got {width} x {height}")
    out = []
    for b in boxes:
        if b.x_max > width or b.y_max > height:
            raise ValueError(f"{image}: box {b.class_name!r} ({b.x_min}, {b.y_min}) to ({b.x_max}, {b.y_max}) "
                             f"leaves the {width} x {height} image")
        out.append(Box(b.class_name, 100.0 * b.x_min / width, 100.0 * b.y_min / height,
                       100.0 * b.x_max / width, 100.0 * b.y_max / height))
    return tuple(out)


def _at(location: str) -> str:
    """"on both sides", "on the left side", "in the right lower lobe"."""
    if location.endswith("both sides"):
        return f"on {location}" if location == "both sides" else f"in the {location}"
    return f"on the {location}" if location.endswith(" side") else f"in the {location}"


def _other_locations(summary: FindingSummary) -> list[str]:
    """The same regions on the other sides (only when the report states a side)."""
    if summary.sides not in [(side,) for side in _SIDES]:
        return []
    return [location_text(dataclasses.replace(summary, sides=(other,)))
            for other in _SIDES if (other,) != summary.sides]


def _location_items(wording: Wording, s: FindingSummary, provenance: Provenance) -> list:
    where = location_text(s)
    if not where:
        return []
    target = f"location_[{s.finding}]"
    answer = capitalise(where) + "."
    items = [qa_item(STAGE, TASK, "captioning",
                     caption_hint(wording, wording.pick(_LOCATION_CAPTIONS).format(f=s.finding), answer),
                     answer, provenance, target=target)]
    others = _other_locations(s)
    if others:
        items.append(choice_item(wording, STAGE, TASK, wording.pick(_LOCATION_STEMS).format(f=s.finding),
                                 [capitalise(where)] + [capitalise(o) for o in others], [capitalise(where)],
                                 provenance, target=target))
        asked = where if wording.chance(0.5) else wording.pick(others)
        detail = "" if asked == where else f"The {s.finding} is located {_at(where)}."
        stem = wording.pick(_LOCATION_YES_NO).format(f=s.finding, at=_at(asked))
        items.append(yes_no_item(wording, STAGE, TASK, stem, asked == where, detail, provenance, target))
    return items


def _severity_items(wording: Wording, s: FindingSummary, provenance: Provenance) -> list:
    if not s.severity:
        return []
    target = f"severity_[{s.finding}]"
    answer = capitalise(s.severity) + "."
    measured = any(ch.isdigit() for ch in s.severity)  # a size such as "1.5 cm"
    question = (_SIZE_CAPTION if measured else wording.pick(_SEVERITY_CAPTIONS)).format(f=s.finding)
    items = [qa_item(STAGE, TASK, "captioning", caption_hint(wording, question, answer), answer, provenance,
                     target=target)]
    scale = next((scale for scale in SEVERITY_SCALES if s.severity in scale), None)
    if scale is not None:
        items.append(choice_item(wording, STAGE, TASK, wording.pick(_SEVERITY_CAPTIONS).format(f=s.finding),
                                 [capitalise(g) for g in scale], [capitalise(s.severity)], provenance,
                                 target=target, shuffle=False))
    return items


def _type_items(wording: Wording, s: FindingSummary, provenance: Provenance) -> list:
    words = [w for phrase in s.phrases for w in phrase.replace(",", " ").split() if w in TYPE_WORDS]
    if not words:
        return []
    answer = capitalise(f"{' '.join(dict.fromkeys(words))} {s.finding}.")
    return [qa_item(STAGE, TASK, "captioning",
                    caption_hint(wording, wording.pick(_TYPE_CAPTIONS).format(f=s.finding), answer),
                    answer, provenance, target=f"type_[{s.finding}]")]


def _description_items(wording: Wording, s: FindingSummary, provenance: Provenance) -> list:
    """A description, when the report says more of the finding than its name."""
    answer = capitalise(describe_finding(s))
    if s.change in _CHANGE_CLAUSES:
        answer += f", {_CHANGE_CLAUSES[s.change]}"
    if answer.lower() == s.finding:
        return []
    answer += "."
    question = caption_hint(wording, wording.pick(_DESCRIPTION_CAPTIONS).format(f=s.finding), answer)
    return [qa_item(STAGE, TASK, "captioning", question, answer, provenance, target=f"description_[{s.finding}]")]


def _detection_items(data: StageInput, wording: Wording) -> list:
    items = []
    images = data.images
    for number, image in enumerate(images, start=1):
        by_class: dict[str, list[Box]] = {}
        for box in data.boxes.get(image.path, ()):
            by_class.setdefault(box.label, []).append(box)
        for label, boxes in by_class.items():
            name = label.lower()
            stem = wording.pick(_DETECTION_STEMS).format(c=capitalise(name))
            if len(images) > 1:
                stem = f"In the x-ray {number} of the main study, {stem[:1].lower()}{stem[1:]}"
            shown = tuple(Box(name, *(round(v, 1) for v in (b.x1, b.y1, b.x2, b.y2))) for b in boxes)
            fields = {"bbox_list": [[b.x1, b.y1, b.x2, b.y2] for b in shown], "image_id": number,
                      "num_of_images": len(images)}
            items.append(qa_item(STAGE, DETECTION_TASK, "detection", f"[detection] {stem}", format_boxes(shown),
                                 Provenance(rule=f"boxes_from_annotations:{image.image_id or image.path}"),
                                 target=name, fields=fields))
    return items


def stage3_items(data: StageInput) -> StageResult:
    """The stage-3 items of a study: per present finding its location, severity, type and
    description items, then the detection items of the images with boxes."""
    wording = data.wording(STAGE)
    items = []
    for s in summarise_findings(data.facts):
        if s.status != PRESENT:
            continue
        provenance = cite(data.facts, s.sentences)
        items += _location_items(wording, s, provenance)
        items += _severity_items(wording, s, provenance)
        items += _type_items(wording, s, provenance)
        items += _description_items(wording, s, provenance)
    items += _detection_items(data, wording)
    skipped = () if items else ("stage 3: no finding is present and no image has boxes",)
    return StageResult(tuple(items), skipped)
