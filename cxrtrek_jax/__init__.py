"""CXRTrek-JAX: staged chest X-ray vision-language reasoning in JAX/Flax.

The library's face; each name comes from the subpackage that owns it:

    import cxrtrek_jax as cx
    cfg = cx.base_config("tiny").override({"train.num_steps": "20"})      # train.config
    cx.train_experiment(cfg, "runs/tiny")                                  # train.run
    result = cx.evaluate_checkpoint("runs/tiny/checkpoints", cx.EvalData("cxrtrek.json"), "runs/tiny/eval")
    cx.export_checkpoint("runs/tiny/checkpoints", "hf-out")                # hf.exporter

Subpackages: `model` (CXRTrekNet, configs, KV cache, LoRA), `train` (the experiment config
tree, step, loop, sharding, checkpoints), `hf` (Hugging Face import/export), `decoding` (the
explicit chain state and staged chains), `evaluation` (decode -> score -> baseline), `case_report`,
`cli`, `testing` (synthetic batches). Names are resolved on first use, so `import cxrtrek_jax`
stays cheap and the command line does not load what a command does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("model", "train", "hf", "decoding", "evaluation", "case_report", "cli", "testing")
# name -> the subpackage whose face exports it.
_FACE = {
    **dict.fromkeys(("CXRTrekNet", "ModelConfig", "LoraConfig", "get_config", "preset_names"), "model"),
    **dict.fromkeys(("ExperimentConfig", "base_config", "train_experiment", "run_training", "TrainSpec",
                     "TrainHooks", "make_train_step", "OptimConfig", "MeshConfig", "CheckpointConfig"), "train"),
    **dict.fromkeys(("import_hf_checkpoint", "export_checkpoint"), "hf"),
    **dict.fromkeys(("DecodeSpec", "StepwiseDecoder", "ChainStudy", "run_chain"), "decoding"),
    **dict.fromkeys(("EvalData", "evaluate_checkpoint", "score_predictions", "ScoringConfig"), "evaluation"),
}

__all__ = ["__version__", *_SUBPACKAGES, *_FACE]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FACE:
        value = getattr(importlib.import_module(f"{__name__}.{_FACE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
