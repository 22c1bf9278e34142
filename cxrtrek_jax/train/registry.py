"""Named experiments: each a small, documented diff over `base_config()`.

    from cxrtrek_jax.train import get_experiment, experiment_names
    cfg = get_experiment("no_context", preset="tiny")

A preset is any of `cxrtrek_jax.model.config.preset_names()`: tiny, compact, small, cxrtreknet-7b,
medgemma-4b. The ablations of the CXRTrek study (what the Makefile's `ablation-NAME` targets run):

| name            | what changes                                                          |
|-----------------|-----------------------------------------------------------------------|
| baseline        | nothing: staged context, all stages, full training, LoRA off          |
| aligned         | an image-dense alignment phase (single stage-1/2 QA pairs) first      |
| grounded        | the demo's recipe: constant-rate study-row alignment, gentle towers   |
| no_context      | each QA pair trained and evaluated alone (context off / mode `none`)  |
| shuffled_stages | stage order permuted per study during training                        |
| own_vs_teacher  | the baseline model evaluated with its own vs the reference answers    |
| lora_r8         | base weights frozen (started from `baseline`'s checkpoint) + LoRA r=8 |
| frozen_vision   | vision tower frozen at its random initialisation                      |
| no_prior        | prior-study images (and the turns needing them) removed               |
| report_only     | stage 8 alone: the classic report-generation setting                  |
| text_only       | `grounded` with every image blanked (constant pixels) in training and |
|                 | evaluation: what the images buy, measured against a model             |

and `demo`, what `make demo` trains (`experiments/demo.py`): `grounded` at the demo's scale
(`DemoSettings`: its phantom set, steps, batch and buckets). `cxrtrek train --experiment demo
--preset tiny --set data.path=OUT/phantom --workdir OUT/run` trains the same model (the same
config) as `make demo` with `--out OUT`, OUT an absolute path (the demo resolves its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from cxrtrek_jax.model.config import LoraConfig
from cxrtrek_jax.train.config import ExperimentConfig, alignment_for, base_config
from cxrtrek_jax.train.optimizer import TowerSchedule

__all__ = ["EXPERIMENTS", "experiment_names", "get_experiment", "ABLATIONS", "DemoSettings", "demo"]


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


# The from-scratch recipe that reads its radiographs, measured on `tiny` with 3,000 phantom studies:
# the view and cardiomegaly are read from the image by step 1,000-1,500 of the alignment phase,
# pleural effusion by ~2,000 with the image-label loss, so 2,500 steps leave a margin; the demo's
# view and stage-2 checks are met with the images and lost with another study's.
GROUNDED_ALIGNMENT_STEPS = 2500
GROUNDED_DECISIVE_STAGES = (2,)
# The alignment rows hold stages 1-3: with stage 3 (attributes and detection boxes) in them the demo's
# detection mean IoU rose from 0.034 to 0.249 (own images; 0.196 swapped), cardiomegaly's boxes beat
# the best constant box (0.789 against 0.670), attribute captions BLEU-1 0.117 -> 0.801, while the view
# and stage-2 checks stay met (80 test studies, seed 0; experiments/RESULTS.md). A stage-1-3 row of the
# demo's phantom is up to ~700 tokens, hence the 768 bucket.
GROUNDED_ALIGNMENT_STAGES = (1, 2, 3)
GROUNDED_ALIGNMENT_BUCKETS = (256, 384, 512, 768)
GROUNDED_IMAGE_TOWER_RATE = 1e-5
# Each known stage-2 finding label of a row weighs as much as 4 answer tokens (about 37 per row):
# with it the alignment phase also reads pleural effusion, which it did not read without.
GROUNDED_IMAGE_LABEL_WEIGHT = 4.0
# The chains train every answer in full, a loss per token: chosen on the validation split
# (experiments/recipe_choice.py, experiments/RESULTS.md) over the square-root weighting with stage 2
# cut (the test-split choice before), whose reports collapsed there (stage-8 BLEU-1 0.07 against 0.31).


def grounded(preset: str) -> ExperimentConfig:
    """An alignment phase of one row per study (its stage-1/2/3 turns in order, teacher-forced) at a
    constant rate, then the chains with the vision tower and projector at GROUNDED_IMAGE_TOWER_RATE,
    so the decoder keeps what the alignment phase taught rather than re-learning the image side.

    Stage 2's closed answers are cut to their deciding token ("Yes." / "No."), so that the token the
    findings decide carries the loss; stage 1's keep their detail sentences, which name the view
    outright ("No. This is a PA view."): every view question itself is an exclusive-or of image and
    wording, which a model from scratch learns only once it reads the view, and the details are what
    teach it to. The rate stays at its peak throughout (`final_lr_fraction` 1.0): under a cosine decay
    that exclusive-or was never learned. An auxiliary loss (`image_label_weight`) asks the mean image
    token of the current radiograph for the findings its stage 2 answers, through a fixed read-out:
    without it only the global findings (cardiomegaly) were read. Stage 3 (attributes and detection
    boxes) shares the rows: its boxes are otherwise never learnt in the chain phase's few steps
    (GROUNDED_ALIGNMENT_STAGES).

    The chains train every answer as given, a loss per token (the base config's): on the validation
    split this kept stage 2 and the reports, where a square-root weighting with stage 2 cut to
    "Yes."/"No." (chosen earlier on the test split) lost the reports (`experiments/recipe_choice.py`)."""
    cfg = base_config(preset)
    base = alignment_for(preset)
    alignment = dataclasses.replace(
        base, num_steps=GROUNDED_ALIGNMENT_STEPS, stages=GROUNDED_ALIGNMENT_STAGES, context="on",
        closed_answers="decisive", decisive_stages=GROUNDED_DECISIVE_STAGES,
        length_buckets=GROUNDED_ALIGNMENT_BUCKETS,
        image_label_weight=GROUNDED_IMAGE_LABEL_WEIGHT,
        optim=dataclasses.replace(base.optim, final_lr_fraction=1.0))
    gentle = TowerSchedule(learning_rate=GROUNDED_IMAGE_TOWER_RATE)
    return _named(
        cfg, "grounded",
        "constant-rate study-row alignment phase (stages 1-3, stage-2 closed answers cut to Yes/No, "
        "an image-label loss from the stage-2 answers), then the chains with the image towers at 1e-5, "
        "every answer in full, a loss per token",
        alignment=alignment, optim=dataclasses.replace(cfg.optim, vision=gentle, projector=gentle),
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


def text_only(preset: str) -> ExperimentConfig:
    """`grounded` with every image blanked (`PipelineConfig.blank_images`) to the vision tower's
    `pixel_mean`, the pixel value its normalisation maps to 0: the same rows, image slots and
    tokens, trained (alignment phase included) and evaluated (`evaluate_checkpoint` reads the
    setting from the checkpoint) without a single informative pixel. Its scores against
    `grounded`'s are what the images buy, measured against a model rather than a lookup table."""
    recipe = grounded(preset)
    blank = recipe.model.vision.pixel_mean
    return _named(recipe.override({"data.pipeline.blank_images": blank}), "text_only",
                  f"the grounded recipe with every image blanked to the constant {blank} (the vision "
                  "normalisation's zero) in training and evaluation: a text-only model")


# The image slots the demo's chains need: current frontal and lateral, prior frontal and lateral.
DEMO_IMAGE_SLOTS = 4


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What `make demo` sets on top of its recipe (`experiments/demo.py`'s flags choose them).

    recipe: the registry experiment trained (`grounded`; `text_only` = the same with every image
      blanked, `--experiment text_only`; not `demo`).
    data_path: the phantom set's directory (the demo passes OUT/phantom).
    studies: phantom studies (split 80/10/10); turns: (min, max) QA turns per phantom study.
    length_buckets: padded sequence lengths in tokens; the model is widened to the longest
      (never narrowed) and to DEMO_IMAGE_SLOTS images.
    batch_size: the chains' global batch, in rows.
    learning_rate: the chains' peak rate (the recipe's per-tower rates stay); warmup is a tenth of
      `steps` (at least 1), the schedule `steps` + 1 long, a checkpoint every `steps` / 2.
    steps: chain training steps (after the recipe's alignment phase, if any).
    seed: initialisation, data order and augmentation (never the phantom set).
    alignment_steps: the alignment phase's steps; None = the recipe's own.
    """

    recipe: str = "grounded"
    data_path: str = "demo_out/phantom"
    studies: int = 3000
    turns: tuple[int, int] = (10, 12)
    length_buckets: tuple[int, ...] = (512, 768, 1024)
    batch_size: int = 4
    learning_rate: float = 1e-3
    steps: int = 300
    seed: int = 0
    alignment_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.length_buckets:
            raise ValueError("DemoSettings.length_buckets: needs at least one length (the longest sizes the model)")

    def overrides(self, recipe: ExperimentConfig) -> dict[str, object]:
        """The dotted-key overrides that put `recipe` (on its preset) at these settings."""
        out: dict[str, object] = {
            "data.path": self.data_path,
            "data.phantom_studies": self.studies,
            "data.phantom_size": 256,
            "data.phantom_turns": self.turns,
            "data.pipeline.length_buckets": self.length_buckets,
            "data.pipeline.global_batch_size": self.batch_size,
            "tokenizer.vocab_size": 1024,
            "optim.learning_rate": self.learning_rate,
            "optim.warmup_steps": max(self.steps // 10, 1),
            "optim.total_steps": self.steps + 1,
            "train.num_steps": self.steps,
            "train.seed": self.seed,
            "data.pipeline.seed": self.seed,
            "train.log_every": 5,
            # 10 batches: the image-reliance line from 2 batches (~6 studies of one-pair rows)
            # swung between 0.008 and 0.066 nats for the same recipe.
            "train.eval_batches": 10,
            "checkpoint.save_every": max(self.steps // 2, 1),
        }
        if self.alignment_steps is not None:
            if recipe.alignment is None:
                raise ValueError(f"alignment_steps {self.alignment_steps}: experiment {self.recipe!r} has no "
                                 "alignment phase (the `aligned` and `grounded` experiments do)")
            out["alignment.num_steps"] = self.alignment_steps
        if recipe.model.text.max_positions < max(self.length_buckets):
            out["model.text.max_positions"] = max(self.length_buckets)
        if recipe.model.max_images < DEMO_IMAGE_SLOTS:
            out["model.max_images"] = DEMO_IMAGE_SLOTS
        return out


def demo(preset: str, settings: DemoSettings = DemoSettings()) -> ExperimentConfig:
    """What `make demo` trains: `settings.recipe` (`grounded`) on model preset `preset` at the
    demo's scale (`DemoSettings`). ValueError for an unknown recipe or alignment steps without an
    alignment phase."""
    if settings.recipe not in _ABLATION_EXPERIMENTS:
        raise ValueError(f"the demo's recipe must be one of {', '.join(ABLATIONS)}, got {settings.recipe!r}")
    recipe = _ABLATION_EXPERIMENTS[settings.recipe](preset)
    return _named(recipe.override(settings.overrides(recipe)), "demo",
                  f"`make demo`: the {settings.recipe} experiment on {settings.studies} phantom studies, "
                  f"{settings.steps} chain steps of batch {settings.batch_size} (experiments/demo.py)")


_ABLATION_EXPERIMENTS: dict[str, Callable[[str], ExperimentConfig]] = {
    "baseline": baseline,
    "aligned": aligned,
    "grounded": grounded,
    "no_context": no_context,
    "shuffled_stages": shuffled_stages,
    "own_vs_teacher": own_vs_teacher,
    "lora_r8": lora_r8,
    "frozen_vision": frozen_vision,
    "no_prior": no_prior,
    "report_only": report_only,
    "text_only": text_only,
}
ABLATIONS = tuple(_ABLATION_EXPERIMENTS)
EXPERIMENTS: dict[str, Callable[[str], ExperimentConfig]] = {**_ABLATION_EXPERIMENTS, "demo": demo}


def experiment_names() -> tuple[str, ...]:
    return tuple(EXPERIMENTS)


def get_experiment(name: str, preset: str = "small") -> ExperimentConfig:
    """The named experiment on model preset `preset` (tiny, compact, small, cxrtreknet-7b,
    medgemma-4b: `cxrtrek_jax.model.config.preset_names()`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name](preset)
