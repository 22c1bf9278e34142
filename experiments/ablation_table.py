"""The ablations of the study, each a named difference from the `grounded` recipe: what it changes
(dotted config overrides), the question it answers, the context its answers are read in, and
whether the change applies to the chains only (the alignment phase then shared with `grounded`).
`experiments.ablation_study` trains them, `experiments.ablation_answers` compares them."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Ablation", "ABLATION_TABLE", "BY_NAME", "RECIPE", "BLANK_PIXEL", "ablation_names"]

RECIPE = "grounded"
# The vision normalisation's zero (`VisionConfig.pixel_mean`, the same in every preset): `blind`'s
# constant image, as the registry's `text_only`.
BLANK_PIXEL = 0.5


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One ablation: `grounded` with `overrides` (dotted config keys -> values).

    question: what it answers, against `grounded` (or, for grounded itself, what it is).
    main_context: the evaluation context its answers are read in (`none` for a model trained
      without context).
    chains_only: the overrides apply to the chains, not to the alignment phase, which is then
      `grounded`'s own (shared): LoRA from the same aligned start; the prior's images removed
      from the chains (stages 1-3, all the alignment phase trains, need no prior).
    """

    name: str
    question: str
    overrides: tuple[tuple[str, Any], ...] = ()
    main_context: str = "own"
    chains_only: bool = False

    def override_dict(self) -> dict[str, Any]:
        return dict(self.overrides)


ABLATION_TABLE: tuple[Ablation, ...] = (
    Ablation("grounded", "the reference: staged context, all stages, full fine-tuning, trained towers"),
    Ablation("no_context", "does staged context help? each QA pair trained alone",
             (("data.pipeline.sequence.context", "off"),), main_context="none"),
    Ablation("shuffled_stages", "does the clinical order help? stages permuted per study in training",
             (("data.pipeline.sequence.context", "shuffled"),)),
    Ablation("blind", "what does reading the image buy? every image blanked in training and evaluation",
             (("data.pipeline.blank_images", BLANK_PIXEL),)),
    Ablation("frozen_vision", "what does training the vision tower buy? tower frozen at random init",
             (("model.frozen", ("vision",)),)),
    Ablation("lora_r8", "LoRA r=8 vs full fine-tuning from the same aligned start",
             (("model.lora", {"rank": 8, "alpha": 16.0}), ("model.frozen", ("vision", "projector", "text"))),
             chains_only=True),
    Ablation("no_prior", "the prior study: its images and the turns that need them removed",
             (("data.pipeline.sequence.no_prior", True),), chains_only=True),
    Ablation("report_only", "does training the earlier stages help the report? stage 8 alone",
             (("data.pipeline.sequence.stages", (8,)),)),
)
BY_NAME = {a.name: a for a in ABLATION_TABLE}


def ablation_names() -> tuple[str, ...]:
    return tuple(BY_NAME)
