"""The default question script: the eight stages asked of a radiograph that comes without questions.

    plan = default_script(current_images=1, prior_images=1)
    turn = next(plan)            # stage 1, introduces the current image(s)
    turn = plan.send(answer)     # ... later questions follow the answers

The script reads a film the way the phantom's studies do
(`data_pipeline.phantom.questions`), in the words of the finding vocabulary
(`data_pipeline.schema.findings`), so that a phantom-trained model understands it:

  1  view (single choice PA / AP) and technical quality;
  2  one yes/no question per finding kind (effusion, pneumothorax, ...);
  3  for each finding the model answered "Yes" to: its description and its
     bounding box;
  4  the relationships among the findings (only when a pathology was found);
  5  the interval change against the prior image (only when one is given; it
     is introduced in that question);
  6  the trend on the follow-up image (only when a later image is given);
  7  advice;
  8  the report.

Images are introduced like the phantom introduces them: the current views in
the first question, the prior image in the stage-5 question, the later image
in the stage-6 question (image order: current, prior, later).
"""

from __future__ import annotations

import re

from cxrtrek_jax.decoding.turn_plans import Turn, TurnPlan
from data_pipeline.schema.findings import FINDING_KINDS, FINDING_NAMES, PATHOLOGIES, PRESENCE_QUESTIONS
from data_pipeline.schema.records import IMAGE_PLACEHOLDER

__all__ = ["default_script", "says_yes"]

_FIRST_WORD = re.compile(r"[A-Za-z]+")


def says_yes(answer: str) -> bool:
    """Whether a yes/no answer starts with the word "yes" (case-insensitive)."""
    match = _FIRST_WORD.search(answer)
    return match is not None and match.group(0).lower() == "yes"


def _images(count: int) -> str:
    return " ".join([IMAGE_PLACEHOLDER] * count)


class _Numbered:
    """Makes turns with consecutive turn indices."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, stage: int, task_type: str, qtype: str, question: str, images: int) -> Turn:
        turn = Turn(turn_index=self.count, stage=stage, task_type=task_type, qtype=qtype, question=question,
                    image_input_count=images)
        self.count += 1
        return turn


def default_script(*, current_images: int = 1, prior_images: int = 0, later_images: int = 0) -> TurnPlan:
    """The adaptive 8-stage plan (see the module docstring); send it each decoded answer."""
    if current_images < 1:
        raise ValueError(f"the question script needs at least one current image, got {current_images}")
    if prior_images < 0 or later_images < 0:
        raise ValueError(f"image counts must be >= 0, got prior {prior_images}, later {later_images}")
    turn = _Numbered()
    shown = current_images

    view = "Which projection was used for this frontal chest radiograph? A. PA B. AP"
    yield turn(1, "View_Information", "single-choice",
               f"Here is the current X-ray image: {_images(current_images)} . {view}", shown)
    yield turn(1, "Quality_Assessment", "captioning", "Assess the technical quality of this radiograph.", shown)

    found = []
    for kind in FINDING_KINDS:
        answer = yield turn(2, "Findings_Identification", "yes_no", PRESENCE_QUESTIONS[kind][0], shown)
        if says_yes(answer):
            found.append(kind)

    for kind in found:
        name = FINDING_NAMES[kind]
        describe = "Describe the cardiac silhouette." if kind == "cardiomegaly" else f"Describe the {name}."
        yield turn(3, "Attributes_Description", "captioning", describe, shown)
        yield turn(3, "Findings_Detection", "detection", f"Locate the {name} in the image.", shown)

    if any(kind in PATHOLOGIES for kind in found):
        yield turn(4, "Relationships_Analysis", "captioning",
                   "What are the relationships among the findings in this chest X-ray?", shown)

    if prior_images:
        shown += prior_images
        yield turn(5, "Differences_Comparison", "captioning",
                   f"Prior radiograph: {_images(prior_images)} . Compared with the prior radiograph, what has changed?",
                   shown)
        yield turn(5, "Differences_Comparison", "yes_no",
                   "Is there any new abnormality compared with the prior study?", shown)

    if later_images:
        shown += later_images
        yield turn(6, "Future_Trend_Analysis", "captioning",
                   f"A follow-up radiograph is provided: {_images(later_images)} . "
                   "How do the findings evolve on the follow-up radiograph?", shown)

    yield turn(7, "Diagnosis_Advice", "captioning", "What would you recommend as the next steps for this patient?",
               shown)
    yield turn(8, "Report_Generation", "captioning", "Write the radiology report for this chest X-ray.", shown)
