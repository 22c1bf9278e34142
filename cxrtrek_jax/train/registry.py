"""Named experiments: each a small, documented diff over `base_config()`.

    from cxrtrek_jax.train import get_experiment, experiment_names
    cfg = get_experiment("no_context", preset="tiny")

The ablations of the CXRTrek study (what the Makefile's `ablation-NAME` targets run):

| name            | what changes                                                          |
|-----------------|-----------------------------------------------------------------------|
| baseline        | nothing: staged context, all stages, full training, LoRA off          |
| aligned         | an image-dense alignment phase (single stage-1/2 QA pairs) first      |
| no_context      | each QA pair trained and evaluated alone (context off / mode `none`)  |
| shuffled_stages | stage order permuted per study during training                        |
| own_vs_teacher  | the baseline model evaluated with its own vs the reference answers    |
| lora_r8         | base weights frozen (started from `baseline`'s checkpoint) + LoRA r=8 |
| frozen_vision   | vision tower frozen at its random initialisation                      |
| no_prior        | prior-study images (and the turns needing them) removed               |
| report_only     | stage 8 alone: the classic report-generation setting                  |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from cxrtrek_jax.model.config import LoraConfig
from cxrtrek_jax.train.config import ExperimentConfig, alignment_for, base_config

__all__ = ["EXPERIMENTS", "experiment_names", "get_experiment", "ABLATIONS"]


def _named(cfg: ExperimentConfig, name: str, description: str, **changes) -> ExperimentConfig:
    return dataclasses.replace(cfg, name=name, description=description, **changes)


def baseline(preset: str) -> ExperimentConfig:
    return base_config(preset)


def aligned(preset: str) -> ExperimentConfig:
    return _named(
        base_config(preset), "aligned",
        "baseline after an image-dense alignment phase (single QA pairs of stages 1-2)",
        alignment=alignment_for(preset),
    )


def no_context(preset: str) -> ExperimentConfig:
    cfg = base_config(preset).override({"data.pipeline.sequence.context": "off"})
    return _named(
        cfg, "no_context", "each QA pair trained and evaluated alone (no stage context)",
        eval=dataclasses.replace(cfg.eval, contexts=("none",)),
    )


def shuffled_stages(preset: str) -> ExperimentConfig:
    cfg = base_config(preset).override({"data.pipeline.sequence.context": "shuffled"})
    return _named(
        cfg, "shuffled_stages", "stage order permuted per study in training; evaluated in given order",
    )


def own_vs_teacher(preset: str) -> ExperimentConfig:
    cfg = base_config(preset)
    return _named(
        cfg, "own_vs_teacher", "baseline training; evaluation with own vs reference answers as context",
        eval=dataclasses.replace(cfg.eval, contexts=("own", "teacher")),
    )


def lora_r8(preset: str) -> ExperimentConfig:
    cfg = base_config(preset)
    model = dataclasses.replace(cfg.model, lora=LoraConfig(rank=8, alpha=16.0),
                                frozen=("vision", "projector", "text"))
    return _named(
        cfg, "lora_r8", "frozen baseline weights + LoRA rank 8 on the decoder projections",
        model=model,
        train=dataclasses.replace(cfg.train, init_from="runs/baseline/checkpoints"),
    )


def frozen_vision(preset: str) -> ExperimentConfig:
    cfg = base_config(preset)
    return _named(
        cfg, "frozen_vision", "vision tower frozen at its random initialisation (random features)",
        model=dataclasses.replace(cfg.model, frozen=("vision",)),
    )


def no_prior(preset: str) -> ExperimentConfig:
    cfg = base_config(preset).override({"data.pipeline.sequence.no_prior": True})
    return _named(cfg, "no_prior", "prior-study images and the turns that need them removed")


def report_only(preset: str) -> ExperimentConfig:
    cfg = base_config(preset).override({"data.pipeline.sequence.stages": (8,)})
    return _named(cfg, "report_only", "stage 8 (report generation) alone")


EXPERIMENTS: dict[str, Callable[[str], ExperimentConfig]] = {
    "baseline": baseline,
    "aligned": aligned,
    "no_context": no_context,
    "shuffled_stages": shuffled_stages,
    "own_vs_teacher": own_vs_teacher,
    "lora_r8": lora_r8,
    "frozen_vision": frozen_vision,
    "no_prior": no_prior,
    "report_only": report_only,
}
ABLATIONS = tuple(EXPERIMENTS)


def experiment_names() -> tuple[str, ...]:
    return tuple(EXPERIMENTS)


def get_experiment(name: str, preset: str = "small") -> ExperimentConfig:
    """The named experiment on model preset `preset` ("tiny", "small", "cxrtreknet-7b")."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name](preset)
