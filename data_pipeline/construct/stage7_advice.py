"""Stage 7, diagnostic advice: the report's own recommendation sentences ("recommend", "follow-up",
"correlate clinically"), verbatim, and a small per-finding rule table for the present findings.

Each rule-table answer names its rules in provenance (`advice_table:<finding>`), so it is never
mistaken for the radiologist's words (and left out where the report's recommendation says just
what the table would); a study with neither a recommendation nor a finding the table knows gets
no stage-7 item.
"""

from __future__ import annotations

from data_pipeline.construct.finding_summary import PRESENT, summarise_findings
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import StageResult, cite, qa_item
from data_pipeline.construct.stage_questions import caption_hint

__all__ = ["ADVICE_RULES", "stage7_items"]

STAGE = 7
TASK = "Diagnosis_Advice"
# Finding (canonical name) -> advice; most urgent first (a study's advice keeps this order).
ADVICE_RULES = {
    "pneumothorax": "Urgent clinical assessment of the pneumothorax is advised, with chest tube placement if it is "
                    "large or the patient is unstable, and a short-interval follow-up radiograph.",
    "pneumoperitoneum": "Free intraperitoneal air requires urgent surgical assessment.",
    "pulmonary edema": "Assessment of the fluid status and cardiac function is advised for the pulmonary edema.",
    "pneumonia": "Clinical correlation for infection, treatment, and a follow-up radiograph to confirm resolution "
                 "are advised.",
    "consolidation": "Clinical correlation for pneumonia, treatment, and a follow-up radiograph to confirm "
                     "resolution are advised.",
    "pleural effusion": "Ultrasound evaluation of the pleural effusion is suggested, with thoracentesis if "
                        "clinically indicated.",
    "mass": "A contrast-enhanced chest CT and consideration of tissue sampling are advised for the mass.",
    "nodule": "A chest CT is recommended to characterise the nodule.",
    "lung nodule": "A chest CT is recommended to characterise the nodule.",
    "fracture": "Clinical correlation for point tenderness and dedicated rib views are advised for the fracture.",
    "cardiomegaly": "Echocardiography is recommended to assess the enlarged heart.",
    "atelectasis": "Deep breathing exercises and a follow-up radiograph are advised for the atelectasis.",
    "endotracheal tube": "The endotracheal tube position should be confirmed relative to the carina.",
    "nasogastric tube": "The nasogastric tube position should be confirmed before use.",
    "enteric tube": "The enteric tube position should be confirmed before use.",
    "central venous catheter": "The catheter tip position should be confirmed and a pneumothorax excluded.",
    "picc line": "The PICC line tip position should be confirmed before use.",
    "chest tube": "The chest tube should be monitored and its position confirmed.",
    "support devices": "The positions of the support devices should be confirmed clinically.",
}
_REPORT_QUESTIONS = ("What does the radiologist recommend based on this chest X-ray?",
                     "Offer recommendations based on the chest X-ray analysis.",
                     "What further management or imaging is advised?")
_RULE_QUESTIONS = ("What would you recommend as the next steps for this patient?",
                   "What clinical actions should be taken regarding the findings on this chest X-ray?",
                   "What follow-up would you advise for the findings on this radiograph?")


def stage7_items(data: StageInput) -> StageResult:
    """The stage-7 items of a study: the report's recommendations, then the rule-table advice."""
    wording = data.wording(STAGE)
    items = []
    if data.facts.recommendations:
        indices = sorted(set(data.facts.recommendations))
        provenance = cite(data.facts, indices)
        answer = " ".join(s.text for s in provenance.sentences)
        items.append(qa_item(STAGE, TASK, "captioning", caption_hint(wording, wording.pick(_REPORT_QUESTIONS), answer),
                             answer, provenance))
    present = {s.finding: s for s in summarise_findings(data.facts) if s.status == PRESENT}
    ruled = [name for name in ADVICE_RULES if name in present]
    answer = " ".join(dict.fromkeys(ADVICE_RULES[name] for name in ruled))
    if ruled and not (items and items[0].answer == answer):  # not when the report says just that
        provenance = cite(data.facts, sorted({i for name in ruled for i in present[name].sentences}),
                          rule=" + ".join(f"advice_table:{name}" for name in ruled))
        items.append(qa_item(STAGE, TASK, "captioning", caption_hint(wording, wording.pick(_RULE_QUESTIONS), answer),
                             answer, provenance))
    skipped = () if items else ("stage 7: no recommendation in the report and no present finding in the advice table",)
    return StageResult(tuple(items), skipped)
