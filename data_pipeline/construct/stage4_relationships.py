"""Stage 4, relationships between findings: from the report's sentences that link two findings
("effusion with associated atelectasis", "opacity likely reflecting atelectasis", "due to",
"consistent with"), one caption per relation and one summary of all of them; nothing when the
report links none."""

from __future__ import annotations

from data_pipeline.construct.report_facts import FindingRelation
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import StageResult, cite, qa_item
from data_pipeline.construct.stage_questions import capitalise, caption_hint

__all__ = ["RELATION_VERBS", "stage4_items"]

STAGE = 4
TASK = "Relationships_Analysis"
# How each relation kind (report_facts.RELATION_KINDS) reads between its two findings.
RELATION_VERBS = {
    "associated_with": "is associated with",
    "likely_reflecting": "likely reflects",
    "due_to": "is likely due to",
    "consistent_with": "is consistent with",
}
_PAIR_QUESTIONS = ("What is the relationship between the {a} and the {b}?",
                   "Examine how the {a} correlates with the {b} in the X-ray image.",
                   "How are the {a} and the {b} related on this radiograph?")
_SUMMARY_QUESTIONS = ("What are the relationships among the findings in this chest X-ray?",
                      "Assess associations among abnormalities and foreign bodies.",
                      "What relationships exist between the radiographic findings in this X-ray study?")


def _sentence(relation: FindingRelation) -> str:
    if relation.kind not in RELATION_VERBS:
        raise ValueError(f"unknown relation kind {relation.kind!r} (known: {', '.join(RELATION_VERBS)})")
    return capitalise(f"the {relation.source} {RELATION_VERBS[relation.kind]} the {relation.target}.")


def stage4_items(data: StageInput) -> StageResult:
    """The stage-4 items of a study (none when the report links no findings)."""
    relations = tuple(dict.fromkeys(data.facts.relations))
    if not relations:
        return StageResult(skipped=("stage 4: the report links no findings",))
    wording = data.wording(STAGE)
    items = []
    for relation in relations:
        answer = _sentence(relation)
        question = wording.pick(_PAIR_QUESTIONS).format(a=relation.source, b=relation.target)
        items.append(qa_item(STAGE, TASK, "captioning", caption_hint(wording, question, answer), answer,
                             cite(data.facts, [relation.sentence])))
    if len(relations) > 1:
        answer = " ".join(_sentence(r) for r in relations)
        items.append(qa_item(STAGE, TASK, "captioning", caption_hint(wording, wording.pick(_SUMMARY_QUESTIONS), answer),
                             answer, cite(data.facts, sorted({r.sentence for r in relations}))))
    return StageResult(tuple(items))
