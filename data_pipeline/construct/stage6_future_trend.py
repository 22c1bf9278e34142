"""Stage 6, future trend: only for a study with a later study, and always then.

The later report is the answer key: `finding_changes.compare_reports(current, next)` says how
each finding went, and the items say it as the expected course ("the left pleural effusion is
expected to improve"). No later image is shown (as in the released sample, the question is asked
of the current study alone). Where the reports determine no course, the overview states what the
follow-up study shows.
"""

from __future__ import annotations

import functools
import operator

from data_pipeline.construct.finding_changes import FindingChange, compare_reports
from data_pipeline.construct.finding_summary import ABSENT, PRESENT, describe_finding, summarise_findings
from data_pipeline.construct.stage5_comparison import change_provenance
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import CURRENT, NEXT, Provenance, StageResult, cite, qa_item
from data_pipeline.construct.stage_questions import capitalise, caption_hint, join_phrases

__all__ = ["COURSES", "stage6_items"]

STAGE = 6
TASK = "Future_Trend_Analysis"
# Each change from the current to the later study, said as the expected course.
COURSES = {"new": "is expected to develop", "resolved": "is expected to resolve", "worse": "is expected to worsen",
           "better": "is expected to improve", "unchanged": "is expected to remain stable",
           "persistent": "is expected to persist"}
_DEVICE_COURSES = {"resolved": "is expected to be removed", "new": "is expected to be placed"}
_OVERVIEW = ("What is the expected course of the findings on follow-up imaging?",
             "What are the anticipated changes in the findings based on the current X-ray?",
             "How are the findings of this X-ray expected to evolve?")
_PER_FINDING = ("What are the expected changes in the {f} based on the current X-ray findings?",
                "How is the {f} likely to evolve on follow-up?")


def _course(c: FindingChange) -> str:
    verb = _DEVICE_COURSES.get(c.change) if c.category == "foreign_body" else None
    return capitalise(f"the {c.finding} {verb or COURSES[c.change]}.")


def _fallback(data: StageInput) -> tuple[str, Provenance]:
    """What the follow-up study shows, when the reports determine no course."""
    summaries = summarise_findings(data.next_facts)
    present = [describe_finding(s) for s in summaries if s.status == PRESENT]
    indices = sorted({i for s in summaries for i in s.sentences})
    if present:
        answer = f"On follow-up, {join_phrases(present)} {'is' if len(present) == 1 else 'are'} expected."
    elif any(s.status == ABSENT for s in summaries):
        answer = "No abnormality is expected on follow-up."
    else:
        answer = "The follow-up course is not stated."
    provenance = Provenance(rule="course:follow_up_findings")
    return answer, (cite(data.next_facts, indices, NEXT) + provenance if indices else provenance)


def stage6_items(data: StageInput) -> StageResult:
    """The stage-6 items of a study with a later study (none without one)."""
    if data.next_facts is None:
        return StageResult(skipped=("stage 6: no later study",))
    wording = data.wording(STAGE)
    changes = compare_reports(data.facts, data.next_facts)
    provenances = [change_provenance(c, data.facts, data.next_facts, CURRENT, NEXT) for c in changes]
    if changes:
        answer = " ".join(_course(c) for c in changes)
        provenance = functools.reduce(operator.add, provenances)
    else:
        answer, provenance = _fallback(data)
    question = caption_hint(wording, wording.pick(_OVERVIEW), answer)
    items = [qa_item(STAGE, TASK, "captioning", question, answer, provenance)]
    for c, cited in zip(changes, provenances):
        answer = _course(c)
        question = wording.pick(_PER_FINDING).format(f=c.finding)
        items.append(qa_item(STAGE, TASK, "captioning", caption_hint(wording, question, answer), answer, cited,
                             target=f"trend_[{c.finding}]"))
    return StageResult(tuple(items))
