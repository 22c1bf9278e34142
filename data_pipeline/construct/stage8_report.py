"""Stage 8, the report, in the authors' variants as the report's sections allow:

    findings and impression   `Report_Generation[ALL]` ("Impression: ... Findings: ...", the
                              sample's order) and one of `[Findings]`,
                              `[Impression_with_findings]` (the findings given in the question),
                              `[Impression_without_findings]`, chosen by the study's seed;
    findings only             `Report_Generation[Findings]` (a report without headers is all
                              findings);
    impression only           `Report_Generation[Impression]`.

Answers are the sections' text with runs of whitespace made single spaces.
"""

from __future__ import annotations

from data_pipeline.construct.report_facts import ReportFacts
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import Provenance, StageResult, cite, qa_item
from data_pipeline.construct.stage_questions import Wording, caption_hint

__all__ = ["report_section", "stage8_items"]

STAGE = 8
_QUESTIONS = {
    "ALL": ("Create a detailed report summarizing the X-ray findings and impressions.",
            "Compose a comprehensive chest X-ray report, ensuring it contains distinct 'Impression:' and "
            "'Findings:' sections.",
            "Prepare a full report based on the X-ray review."),
    "Findings": ("Generate the main findings from the X-ray image.", "What findings would you highlight in the study?",
                 "Can you describe the findings in the X-ray image in detail?", "Findings of this study: ______."),
    "Impression": ("What is the impression of this study?",
                   "What is the overall clinical takeaway from the chest X-ray?", "Final impression: ______."),
    "Impression_with_findings": ("Summarize the following Findings: {findings} Write its Impression.",
                                 "Generate the impressions section of a diagnostic report given the following "
                                 "findings: {findings}"),
    "Impression_without_findings": ("How would you diagnose the patient based on the chest X-ray image?",
                                    "What is the concise clinical interpretation of the chest X-ray?"),
}


def report_section(facts: ReportFacts, section: str) -> str:
    """A section's text with whitespace runs made single spaces ("" when the report has none)."""
    return " ".join((facts.sections.get(section) or "").split())


def _provenance(facts: ReportFacts, sections: tuple[str, ...]) -> Provenance:
    indices = [s.index for s in facts.sentences if s.section in sections]
    rule = "report_sections:" + "+".join(sections)
    return cite(facts, indices, rule=rule) if indices else Provenance(rule=rule)


def _item(data: StageInput, wording: Wording, variant: str, answer: str, sections: tuple[str, ...],
          findings: str = ""):
    question = wording.pick(_QUESTIONS[variant]).format(findings=findings)
    return qa_item(STAGE, f"Report_Generation[{variant}]", "captioning", caption_hint(wording, question, answer),
                   answer, _provenance(data.facts, sections))


def stage8_items(data: StageInput) -> StageResult:
    """The stage-8 items of a study (none when the report has neither findings nor impression)."""
    findings, impression = report_section(data.facts, "findings"), report_section(data.facts, "impression")
    wording = data.wording(STAGE)
    if findings and impression:
        both = ("impression", "findings")
        second = wording.pick(("Findings", "Impression_with_findings", "Impression_without_findings"))
        extra = {"Findings": (findings, ("findings",)), "Impression_with_findings": (impression, both),
                 "Impression_without_findings": (impression, ("impression",))}[second]
        return StageResult((_item(data, wording, "ALL", f"Impression: {impression} Findings: {findings}", both),
                            _item(data, wording, second, *extra, findings=findings)))
    if findings:
        return StageResult((_item(data, wording, "Findings", findings, ("findings",)),))
    if impression:
        return StageResult((_item(data, wording, "Impression", impression, ("impression",)),))
    return StageResult(skipped=("stage 8: the report has neither findings nor impression",))
