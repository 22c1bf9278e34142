"""Stage 5, comparison with the prior study: only for a study with a prior, and always then (the
first stage-5 question introduces the prior's images).

What changed comes from `finding_changes.compare_reports(prior, current)`: an overview caption,
a caption per finding whose change the reports determine, and choice items (new / resolved /
worse / better / unchanged) for those whose change is one of the five. Where the reports
determine no change, the overview says what each study shows.
"""

from __future__ import annotations

import functools
import operator

from data_pipeline.construct.finding_changes import FindingChange, compare_reports
from data_pipeline.construct.finding_summary import ABSENT, PRESENT, describe_finding, summarise_findings
from data_pipeline.construct.report_facts import ReportFacts
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import CURRENT, PRIOR, Provenance, StageResult, choice_item, cite, qa_item
from data_pipeline.construct.stage_questions import capitalise, caption_hint, join_phrases

__all__ = ["stage5_items", "change_provenance", "CHOICE_CHANGES"]

STAGE = 5
TASK, CHOICE_TASK = "Differences_Comparison", "Differences_Comparison[Choice]"
# The changes a choice item offers (a "persistent" finding is not one of them: its size may differ).
CHOICE_CHANGES = ("new", "resolved", "worse", "better", "unchanged")
# (singular, plural) verb phrases of each change, since the prior study.
_VERBS = {"new": ("is new", "are new"), "resolved": ("has resolved", "have resolved"),
          "worse": ("has worsened", "have worsened"), "better": ("has improved", "have improved"),
          "unchanged": ("is unchanged", "are unchanged"), "persistent": ("is still present", "are still present")}
_OVERVIEW = ("What changes are observed between the current and the prior chest X-ray?",
             "Review differences between this X-ray and the earlier one.",
             "What are the key differences in the findings between this chest X-ray and the previous one?")
_PER_FINDING = ("How has the {f} changed compared with the prior study?",
                "Compare the {f} on the current X-ray with the reference X-ray.")
_CHOICE_STEMS = ("How has the {f} changed since the prior study?",
                 "Compared with the reference X-ray, the {f} is: ______")


def change_provenance(change: FindingChange, earlier: ReportFacts, later: ReportFacts,
                      earlier_study: str, later_study: str) -> Provenance:
    """The sentences of both reports that state the finding, and the rule that decided its change."""
    cited = Provenance(rule=f"change:{change.rule}")
    if change.later is not None:
        cited = cite(later, change.later.sentences, later_study) + cited
    if change.earlier is not None:
        cited = cite(earlier, change.earlier.sentences, earlier_study) + cited
    return cited


def _overview_sentence(changes: list[FindingChange]) -> list[str]:
    out = []
    for kind in _VERBS:
        names = [c.finding for c in changes if c.change == kind]
        if names:
            out.append(capitalise(f"the {join_phrases(names)} {_VERBS[kind][len(names) > 1]}."))
    return out


def _shows(facts: ReportFacts, when: str) -> str:
    summaries = summarise_findings(facts)
    present = [describe_finding(s) for s in summaries if s.status == PRESENT]
    if present:
        return f"The {when} study shows {join_phrases(present)}."
    if any(s.status == ABSENT for s in summaries):
        return f"The {when} study shows no abnormality."
    return f"The {when} report names no finding."


def _overview(data: StageInput, changes: list[FindingChange]):
    wording = data.wording(STAGE)
    prior = data.prior_facts
    if changes:
        answer = "Compared with the prior study: " + " ".join(_overview_sentence(changes))
        provenance = functools.reduce(operator.add, [change_provenance(c, prior, data.facts, PRIOR, CURRENT)
                                                     for c in changes])
    else:
        answer = f"{_shows(data.facts, 'current')} {_shows(prior, 'prior')}"
        provenance = Provenance(rule="change:none_determined")
        for facts, study in ((prior, PRIOR), (data.facts, CURRENT)):
            indices = sorted({i for s in summarise_findings(facts) for i in s.sentences})
            if indices:
                provenance = cite(facts, indices, study) + provenance
    question = caption_hint(wording, wording.pick(_OVERVIEW), answer)
    return qa_item(STAGE, TASK, "captioning", question, answer, provenance)


def stage5_items(data: StageInput) -> StageResult:
    """The stage-5 items of a study with a prior (none without one)."""
    if data.prior_facts is None:
        return StageResult(skipped=("stage 5: no prior study",))
    wording = data.wording(STAGE)
    changes = list(compare_reports(data.prior_facts, data.facts))
    items = [_overview(data, changes)]
    for c in changes:
        provenance = change_provenance(c, data.prior_facts, data.facts, PRIOR, CURRENT)
        answer = capitalise(f"the {c.finding} {_VERBS[c.change][0]}.")
        question = wording.pick(_PER_FINDING).format(f=c.finding)
        items.append(qa_item(STAGE, TASK, "captioning", caption_hint(wording, question, answer), answer, provenance,
                             target=f"change_[{c.finding}]"))
        if c.change in CHOICE_CHANGES and wording.chance(0.5):
            items.append(choice_item(wording, STAGE, CHOICE_TASK, wording.pick(_CHOICE_STEMS).format(f=c.finding),
                                     [capitalise(k) for k in CHOICE_CHANGES], [capitalise(c.change)], provenance,
                                     target=f"change_[{c.finding}]"))
    return StageResult(tuple(items))
