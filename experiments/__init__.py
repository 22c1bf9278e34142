"""Named, typed experiment configs (config as code) and the ablation registry."""

from cxrtrek_jax.train.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    TokenizerConfig,
    TrainConfig,
    base_config,
)
from experiments.registry import ABLATIONS, EXPERIMENTS, experiment_names, get_experiment

__all__ = [
    "ABLATIONS",
    "DataConfig",
    "EvalConfig",
    "EXPERIMENTS",
    "ExperimentConfig",
    "TokenizerConfig",
    "TrainConfig",
    "base_config",
    "experiment_names",
    "get_experiment",
]
