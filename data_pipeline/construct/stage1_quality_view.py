"""Stage 1, image quality and view: the views from the images' metadata (or the report's technique
line), and the technique the report states (portable, rotation, inspiration, excluded anatomy).

Views: where every image of the study has a view in its metadata, a caption and a choice item
whose distractors are views the study does not have (the metadata lists them all); where only the
report's technique line names a view, a caption only (the line may not cover every image); where
neither does, no view item. Quality: a yes/no item per stated fact and a caption joining them;
nothing for facts the report does not state.
"""

from __future__ import annotations

from data_pipeline.construct.report_facts import TechniqueFacts
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import Provenance, StageResult, choice_item, cite, qa_item, yes_no_item
from data_pipeline.construct.stage_questions import Wording, capitalise, caption_hint, join_phrases

__all__ = ["VIEW_NAMES", "stage1_items"]

STAGE = 1
VIEW_TASK, QUALITY_TASK = "View_Information", "Quality_Assessment"
# How each normalised view (source_study.VIEWS) is named in answers.
VIEW_NAMES = {
    "PA": "posteroanterior (PA)", "AP": "anteroposterior (AP)", "LATERAL": "lateral", "LL": "left lateral",
    "RL": "right lateral", "AP AXIAL": "AP axial", "PA LLD": "PA left lateral decubitus",
    "AP LLD": "AP left lateral decubitus", "PA RLD": "PA right lateral decubitus",
    "AP RLD": "AP right lateral decubitus", "LAO": "left anterior oblique", "RAO": "right anterior oblique",
    "LPO": "left posterior oblique", "SWIMMERS": "swimmer's", "XTABLE LATERAL": "cross-table lateral",
}
# The views a choice item offers besides the study's own (as the sample's "Oblique X-ray(s)").
_CHOICE_POOL = ("PA", "AP", "LATERAL", "LAO")
_VIEW_STEMS_ONE = ("Which view is this X-ray?", "View of the X-ray: ______",
                   "In which projection was this X-ray taken?")
_VIEW_STEMS_MANY = ("Which views does this study include?", "View(s) of the X-ray: ______",
                    "Which projections were acquired in this study?")
_VIEW_CAPTIONS = ("Can you specify the exact view of the X-ray image?", "What projection is the X-ray image taken in?",
                  "Can you describe the orientation of this X-ray view?", "Which view or views does this study show?")
_QUALITY_CAPTIONS = (
    "Assess the technical quality of the chest X-ray.",
    "What are the imaging settings, and how do they affect the diagnostic quality of the X-ray study?",
    "What is the assessment of the overall image quality?",
    "Can you perform a technical quality assessment of this radiograph?",
)


def _view_answer(views: tuple[str, ...]) -> str:
    names = [VIEW_NAMES[v] for v in views]
    return capitalise(f"{join_phrases(names)} view{'s' if len(names) > 1 else ''}.")


def _view_items(data: StageInput, wording: Wording) -> StageResult:
    images = data.images
    technique = data.facts.technique
    if images and all(image.view for image in images):
        views = tuple(dict.fromkeys(image.view for image in images))
        provenance = Provenance(rule="view_from_image_metadata")
        caption = qa_item(STAGE, VIEW_TASK, "captioning",
                          caption_hint(wording, wording.pick(_VIEW_CAPTIONS), _view_answer(views)),
                          _view_answer(views), provenance)
        names = {v: capitalise(VIEW_NAMES[v]) + " view" for v in dict.fromkeys(_CHOICE_POOL + views)}
        distractors = [v for v in _CHOICE_POOL if v not in views]
        options = views + tuple(wording.sample(distractors, 1 if len(views) == 1 else 4 - len(views)))
        stem = wording.pick(_VIEW_STEMS_ONE if len(views) == 1 else _VIEW_STEMS_MANY)
        choice = choice_item(wording, STAGE, VIEW_TASK, stem, [names[v] for v in options],
                             [names[v] for v in views], provenance, multi=len(views) > 1)
        return StageResult((caption, choice))
    if technique.view:
        answer = _view_answer((technique.view,))
        provenance = cite(data.facts, technique.sentences, rule="view_from_report_technique")
        question = caption_hint(wording, wording.pick(_VIEW_CAPTIONS), answer)
        return StageResult((qa_item(STAGE, VIEW_TASK, "captioning", question, answer, provenance),))
    return StageResult(skipped=("stage 1: no view (no image metadata view and no view in the report's technique)",))


def _quality_facts(t: TechniqueFacts) -> list[tuple[str, bool, str]]:
    """Per technique fact the report states: (yes/no stem, the answer, the sentence stating it)."""
    facts = []
    if t.portable is not None:
        facts.append(("Was this radiograph taken with a portable technique?", t.portable,
                      "The radiograph is a portable study." if t.portable
                      else "The radiograph is not a portable study."))
    if t.rotated is not None:
        facts.append(("Is the patient rotated on this radiograph?", t.rotated,
                      "The patient is rotated." if t.rotated else "There is no patient rotation."))
    if t.inspiration in ("low", "adequate"):
        adequate = t.inspiration == "adequate"
        facts.append(("Is the depth of inspiration adequate?", adequate,
                      "Inspiration is adequate." if adequate else "The lung volumes are low (poor inspiration)."))
    if t.excluded_anatomy:
        verb = "is" if len(t.excluded_anatomy) == 1 else "are"
        facts.append(("Is any part of the chest excluded from the field of view?", True,
                      capitalise(f"the {join_phrases(t.excluded_anatomy)} {verb} excluded from the field of view.")))
    return facts


def _quality_items(data: StageInput, wording: Wording) -> StageResult:
    technique = data.facts.technique
    facts = _quality_facts(technique)
    if not facts:
        return StageResult(skipped=("stage 1: the report states no technique quality (portable, rotation, "
                                    "inspiration, excluded anatomy)",))
    if not technique.sentences:
        raise ValueError(f"study {data.key!r}: the report's technique facts name no sentence they came from")
    provenance = cite(data.facts, technique.sentences, rule="technique_from_report")
    items = [yes_no_item(wording, STAGE, QUALITY_TASK, stem, yes, sentence, provenance)
             for stem, yes, sentence in facts]
    answer = " ".join(sentence for _, _, sentence in facts)
    items.append(qa_item(STAGE, QUALITY_TASK, "captioning",
                         caption_hint(wording, wording.pick(_QUALITY_CAPTIONS), answer), answer, provenance))
    return StageResult(tuple(items))


def stage1_items(data: StageInput) -> StageResult:
    """The stage-1 items of a study: view items, then quality items."""
    wording = data.wording(STAGE)
    return _view_items(data, wording) + _quality_items(data, wording)
