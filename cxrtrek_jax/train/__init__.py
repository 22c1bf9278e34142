"""Training: the experiment config, the jitted step, the loop, sharding, checkpoints and a run.

    from cxrtrek_jax import train
    cfg = train.base_config("tiny").override({"train.num_steps": "20"})
    train.train_experiment(cfg, "runs/tiny")     # data -> tokenizer -> pipeline -> steps -> checkpoints

Modules: `config` (`ExperimentConfig`, the one config tree of a run), `registry` (the named
experiments: small diffs over `base_config`, the CXRTrek ablations), `step` (the train/eval
step functions and `TrainState`), `optimizer` (per-tower AdamW schedules), `sharding` (mesh and
logical-axis rules), `checkpointing` (Orbax, exact resume), `preemption` (SIGTERM, non-finite
stops), `process_gather` (small values from every process), `image_reliance` (the validation's
swapped-image probe), `loop` (`run_training` of a `TrainSpec`) and
`run` (`train_experiment`: one experiment end to end).
"""

from cxrtrek_jax.train.checkpointing import CheckpointConfig, Checkpointer, read_metadata, save_params_only
from cxrtrek_jax.train.config import (
    AlignmentConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    TokenizerConfig,
    TrainConfig,
    alignment_for,
    base_config,
)
from cxrtrek_jax.train.loop import TrainHooks, TrainResult, TrainSpec, default_compute_dtype, run_training
from cxrtrek_jax.train.optimizer import OptimConfig, TowerSchedule, make_optimizer
from cxrtrek_jax.train.preemption import NonFiniteError, PreemptionWatcher
from cxrtrek_jax.train.registry import ABLATIONS, EXPERIMENTS, experiment_names, get_experiment
from cxrtrek_jax.train.run import prepare_data, train_experiment
from cxrtrek_jax.train.sharding import DistributedConfig, MeshConfig, initialize_distributed, make_mesh
from cxrtrek_jax.train.step import TrainState, make_eval_step, make_train_step

__all__ = [
    "CheckpointConfig", "Checkpointer", "read_metadata", "save_params_only",
    "AlignmentConfig", "DataConfig", "EvalConfig", "ExperimentConfig", "TokenizerConfig",
    "TrainConfig", "alignment_for", "base_config",
    "TrainHooks", "TrainResult", "TrainSpec", "default_compute_dtype", "run_training",
    "OptimConfig", "TowerSchedule", "make_optimizer",
    "NonFiniteError", "PreemptionWatcher",
    "ABLATIONS", "EXPERIMENTS", "experiment_names", "get_experiment",
    "prepare_data", "train_experiment",
    "DistributedConfig", "MeshConfig", "initialize_distributed", "make_mesh",
    "TrainState", "make_eval_step", "make_train_step",
]
