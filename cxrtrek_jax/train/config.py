"""The typed, frozen experiment config: everything a `cxrtrek train` run needs.

An `ExperimentConfig` composes the model config (a preset), the data source and
input-pipeline knobs, the tokenizer, the optimiser, the device mesh, the
checkpoint policy, the training length and the evaluation settings. Named
experiments (`cxrtrek_jax.train.registry`) are small diffs over `base_config()`; the
command line applies `--preset NAME` and `--set dotted.key=value` on top, and
every run writes its full resolved config to `<workdir>/config.json`.

Fields derived from the model (image size, image slots, tokens per image) and
from the tokenizer (vocabulary size, image token id) are not duplicated here:
the trainer fills them in when it builds the pipeline and the model.
"""

from __future__ import annotations

import dataclasses
import json

from cxrtrek_jax import config_tree
from cxrtrek_jax.train.checkpointing import CheckpointConfig
from cxrtrek_jax.model.config import ModelConfig, get_config
from cxrtrek_jax.train.optimizer import OptimConfig
from cxrtrek_jax.train.sharding import MeshConfig
from data_pipeline.batches.grain_pipeline import PipelineConfig
from data_pipeline.files.split_rule import SplitConfig
from data_pipeline.text.sequences import CLOSED_ANSWERS, LOSS_WEIGHTINGS, SequenceConfig
from data_pipeline.schema.splits import TEST, TRAIN, VALIDATION

__all__ = [
    "DataConfig",
    "TokenizerConfig",
    "TrainConfig",
    "EvalConfig",
    "AlignmentConfig",
    "ExperimentConfig",
    "base_config",
    "alignment_for",
    "DATA_KINDS",
    "RENAMED_KEYS",
    "current_key",
]

DATA_KINDS = ("phantom", "json", "tfds")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the studies come from, and the data side's own input-pipeline config.

    kind: "phantom" (generate a phantom set into `path` unless it is there),
      "json" (a CXRTrek JSON file at `path`, with or without `split` fields, images
      under `image_root`) or "tfds" (a TFDS data dir built by `cxrtrek data build-tfds`).
    path: the phantom output dir, the JSON file or the TFDS data dir.
    image_root: root of relative image paths (json; defaults to the JSON's dir).
    split_rule: the patient-hash split (`data_pipeline.files.split_rule.SplitConfig`:
      val_fraction, test_fraction, seed) of the studies without a `split` field, used when
      a JSON or phantom source is built into TFDS; the one rule `cxrtrek eval/infer/report`
      apply to the same JSON with --val-fraction/--test-fraction/--split-seed. A TFDS
      data dir's splits were fixed when it was built: leave it at its default there.
    *_split: the splits a run trains on, validates on and evaluates on.
    phantom_*: the generated set: studies, seed, image side in px, split fractions and
      (min, max) QA turns per study (fewer turns = shorter sequences).
    coverage_studies: how many training studies the per-stage coverage table
      printed at the start of every run is computed over (0 = every study).
    pipeline: `data_pipeline.batches.grain_pipeline.PipelineConfig` as the run uses it: batch size,
      length buckets, packing, workers, augmentation, and `pipeline.sequence`
      (`data_pipeline.text.sequences.SequenceConfig`: context "on"/"off"/"shuffled", stage filter,
      no_prior, long chains, system prompt). The run fills what the data and the model fix:
      `source`/`source_kind`/`split`/`image_root` (the prepared TFDS set and the split in
      use), `image_size`, `sequence.tokens_per_image` and `sequence.max_images` (from the
      model); leave those unset ("" / null). Evaluation passes use no augmentation and no
      worker processes.
    """

    kind: str = "phantom"
    path: str = "runs/phantom"
    image_root: str | None = None
    split_rule: SplitConfig = SplitConfig()
    train_split: str = TRAIN
    validation_split: str = VALIDATION
    test_split: str = TEST
    phantom_studies: int = 600
    phantom_seed: int = 0
    phantom_size: int = 256
    phantom_splits: str = "train=0.8,validation=0.1,test=0.1"
    phantom_turns: tuple[int, int] = (20, 26)
    coverage_studies: int = 1000
    pipeline: PipelineConfig = PipelineConfig(
        length_buckets=(512, 768, 1024), sequence=SequenceConfig(drop_unfittable=True))

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data.kind must be one of {DATA_KINDS}, got {self.kind!r}")
        if not self.path:
            raise ValueError("data.path must name the phantom dir, the JSON file or the TFDS data dir")
        if self.kind == "tfds" and self.split_rule != SplitConfig():
            raise ValueError(f"data.split_rule = {self.split_rule}: a TFDS data dir's splits were fixed when it "
                             "was built (`cxrtrek data build-tfds --val-fraction/--test-fraction/--split-seed`); "
                             "data.split_rule goes with data.kind json or phantom")
        p = self.pipeline
        for name, value, unset in (("source", p.source, ""), ("source_kind", p.source_kind, "tfds"),
                                   ("split", p.split, TRAIN), ("image_root", p.image_root, None),
                                   ("image_size", p.image_size, None), ("image_labels", p.image_labels, False),
                                   ("sequence.tokens_per_image", p.sequence.tokens_per_image, None),
                                   ("sequence.max_images", p.sequence.max_images, None)):
            if value != unset:
                raise ValueError(
                    f"data.pipeline.{name} = {value!r}: the run sets it (from data.kind/path/image_root, "
                    f"data.*_split and the model); leave it at {unset!r}")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """path: a Hugging Face tokenizer dir to use; "" = train a byte-level BPE on
    the training split (saved under the data dir, reused by later runs)."""

    path: str = ""
    vocab_size: int = 2048
    min_frequency: int = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """num_steps: optimiser steps; log_every: steps between log lines;
    eval_batches: validation batches per evaluation (at every checkpoint);
    init_from: a params checkpoint (e.g. from `cxrtrek import-hf`) to start from;
    image_label_weight: w > 0 adds the auxiliary image-label loss (`cxrtrek_jax.train.step`):
      the current image's finding labels from the study's own stage-2 answers
      (`data_pipeline.text.image_labels`), read from its mean image token by a fixed read-out, each
      known label weighing w answer tokens; needs `data.pipeline.packing` off."""

    num_steps: int = 300
    log_every: int = 10
    eval_batches: int = 8
    seed: int = 0
    init_from: str = ""
    image_label_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.image_label_weight >= 0.0:
            raise ValueError(f"train.image_label_weight must be >= 0, got {self.image_label_weight}")
        if self.num_steps < 1 or self.log_every < 1 or self.eval_batches < 0:
            raise ValueError(
                f"train.num_steps and train.log_every must be >= 1 and eval_batches >= 0, got "
                f"{self.num_steps}, {self.log_every}, {self.eval_batches}"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Benchmark settings for `cxrtrek eval` on the trained checkpoint:
    contexts: context modes to run ("own", "teacher", "none"); split: data split;
    max_studies: cap on evaluated studies (None = all); max_new_tokens: answer budget."""

    contexts: tuple[str, ...] = ("own", "teacher", "none")
    split: str = TEST
    max_studies: int | None = None
    max_new_tokens: int = 96


@dataclasses.dataclass(frozen=True)
class AlignmentConfig:
    """An image-dense first phase, trained before the staged chains (LLaVA's alignment stage):
    only the QA pairs of `stages`, so that nearly every answer token is one the images decide
    (stage 1: view, quality; stage 2: which findings are present). With `context` "off" every
    pair is alone in its own short row (its images and its question, no earlier turns); with "on"
    a study's pairs of `stages` share one row and its images (teacher-forced, in order), so one
    pass through the vision tower and one system prompt serve all of them (about 7 answers per
    row on the phantom instead of 1).

    The main phase then starts from this phase's last parameters (with a fresh optimiser); a
    run resumed in the main phase does not repeat it. Its checkpoints, metrics and validation
    (on the same kind of rows) live under `<workdir>/alignment/`.

    num_steps: optimiser steps of this phase; global_batch_size: its rows per step;
    length_buckets: its padded row lengths (a single QA pair with its images is short);
    context: "off" (one row per pair) or "on" (one row per study); see above;
    closed_answers: "full", "decisive" (yes/no and single-choice answers cut to "Yes." / "No." /
        "<letter>.", `data_pipeline.text.decisive_answers`, so that the token the images decide carries
        a third to a half of each answer's loss, not about an eighth) or "decisive_if_carried" (cut only
        where the study's stage-3 turns carry what the cut removes); the main phase cuts
        its own per `data.pipeline.sequence.closed_answers`;
    decisive_stages: with closed_answers "decisive" or "decisive_if_carried", cut only these stages'
        answers (None = all);
    loss_weighting: the phase's `SequenceConfig.loss_weighting` ("token", "answer" or "sqrt"), whatever the
        main phase's (`data.pipeline.sequence.loss_weighting`) is;
    image_label_weight: the phase's auxiliary image-label loss (`TrainConfig.image_label_weight`;
        0 = off); the main phase uses `train.image_label_weight`;
    optim: its optimiser (its `total_steps` is set to `num_steps` + 1 by the trainer).
    """

    num_steps: int = 100
    stages: tuple[int, ...] = (1, 2)
    global_batch_size: int = 16
    length_buckets: tuple[int, ...] = (192, 256)
    context: str = "off"
    closed_answers: str = "full"
    decisive_stages: tuple[int, ...] | None = None
    loss_weighting: str = "token"
    image_label_weight: float = 0.0
    optim: OptimConfig = OptimConfig(learning_rate=1e-4, warmup_steps=10, total_steps=101,
                                     weight_decay=0.01)

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.global_batch_size < 1:
            raise ValueError(f"alignment.num_steps and alignment.global_batch_size must be >= 1, got "
                             f"{self.num_steps}, {self.global_batch_size}")
        if not self.stages:
            raise ValueError("alignment.stages must name at least one stage")
        if not self.image_label_weight >= 0.0:
            raise ValueError(f"alignment.image_label_weight must be >= 0, got {self.image_label_weight}")
        if self.context not in ("off", "on"):
            raise ValueError(f"alignment.context must be 'off' (one row per QA pair) or 'on' (one row "
                             f"per study), got {self.context!r}")
        if self.closed_answers not in CLOSED_ANSWERS:
            raise ValueError(f"alignment.closed_answers must be one of {CLOSED_ANSWERS}, got "
                             f"{self.closed_answers!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"alignment.loss_weighting must be one of {LOSS_WEIGHTINGS}, got "
                             f"{self.loss_weighting!r}")
        if self.decisive_stages is not None and (self.closed_answers == "full" or not self.decisive_stages):
            raise ValueError(f"alignment.decisive_stages {self.decisive_stages!r} needs closed_answers 'decisive' "
                             f"(or 'decisive_if_carried') and at least one stage (got closed_answers "
                             f"{self.closed_answers!r})")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One training run: the model, its data, and the recipe. `alignment` (None = off) is the
    image-dense first phase; `optim` is the main phase's optimiser."""

    name: str
    description: str
    model: ModelConfig
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=20, total_steps=300,
                                     weight_decay=0.01)
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(directory="", save_every=100, keep_last=2)
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    alignment: AlignmentConfig | None = None

    def to_dict(self) -> dict:
        return config_tree.to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """From `to_dict` output; the flat data keys of older config.json files are moved to their
        place in the tree (`RENAMED_KEYS`)."""
        return config_tree.from_dict(_migrate(data), cls)

    def with_preset(self, preset: str) -> "ExperimentConfig":
        """The same experiment on another model preset (keeping LoRA/freezing choices)."""
        model = get_config(preset)
        model = dataclasses.replace(model, lora=self.model.lora, frozen=self.model.frozen)
        return dataclasses.replace(self, model=model)

    def override(self, overrides: dict[str, object]) -> "ExperimentConfig":
        """Dotted-key overrides, e.g. {"optim.learning_rate": "3e-4",
        "data.pipeline.sequence.context": "off"}; the older names of `RENAMED_KEYS` still work."""
        return config_tree.override(self, {current_key(key): value for key, value in overrides.items()})


# Experiment keys from before the data side's own pipeline config was embedded in `data`: still
# accepted by `override` (so `--set data.context=off` works) and by `from_dict` (older runs'
# config.json). An old key may also prefix a deeper one (data.augment.brightness).
RENAMED_KEYS = {
    "data.context": "data.pipeline.sequence.context",
    "data.stages": "data.pipeline.sequence.stages",
    "data.no_prior": "data.pipeline.sequence.no_prior",
    "data.long_chains": "data.pipeline.sequence.long_chains",
    "data.window_context": "data.pipeline.sequence.window_context",
    "data.length_buckets": "data.pipeline.length_buckets",
    "data.packing": "data.pipeline.packing",
    "data.global_batch_size": "data.pipeline.global_batch_size",
    "data.num_workers": "data.pipeline.num_workers",
    "data.seed": "data.pipeline.seed",
    "data.augment": "data.pipeline.augment",
}


def current_key(key: str) -> str:
    """The tree's name for a dotted key (itself unless it is, or starts with, a renamed key)."""
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _migrate(data: dict) -> dict:
    """`data` (an experiment dict) with values under renamed keys moved to their current keys."""
    old_data = data.get("data")
    if not isinstance(old_data, dict):
        return data
    moved = {key: value for key, value in old_data.items() if f"data.{key}" in RENAMED_KEYS}
    if not moved:
        return data
    new_data = {key: value for key, value in old_data.items() if key not in moved}
    new_data.setdefault("pipeline", config_tree.to_dict(DataConfig().pipeline))
    for key, value in moved.items():
        parts = current_key(f"data.{key}").split(".")[1:]
        node = new_data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return {**data, "data": new_data}


def base_config(preset: str = "small") -> ExperimentConfig:
    """The staged-context baseline on phantom data with the given model preset."""
    return ExperimentConfig(
        name="baseline",
        description="staged context, all stages, LoRA off, full fine-tuning from scratch",
        model=get_config(preset),
    )


def alignment_for(preset: str) -> AlignmentConfig:
    """The alignment phase of `preset`: its peak learning rate is 1e-4 (the `small` model learns
    the view of its images there and not at 1e-3, benchmarks/grounding.py), 1e-3 for `tiny` (16
    image tokens of 32 px; tests/test_grounding.py)."""
    return AlignmentConfig(optim=dataclasses.replace(AlignmentConfig().optim,
                                                     learning_rate=_ALIGNMENT_LEARNING_RATE.get(preset, 1e-4)))


_ALIGNMENT_LEARNING_RATE = {"tiny": 1e-3}
