"""The applications over the library: the demo (`python -m experiments.demo`), the ablation
runner (`python -m experiments.ablations`) and their results (RESULTS.md). The named experiments
and their config live in the library (`cxrtrek_jax.train.registry`, `cxrtrek_jax.train.config`)
and are re-exported here."""

from cxrtrek_jax.train.config import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    TokenizerConfig,
    TrainConfig,
    base_config,
)
from cxrtrek_jax.train.registry import ABLATIONS, EXPERIMENTS, experiment_names, get_experiment

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
