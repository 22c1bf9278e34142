"""Parameter-efficient fine-tuning: LoRA adapters, merging, and the filter
of trainable parameters.

LoRA attaches a `LoraAdapter` (params of type `nnx.LoRAParam`, a subclass
of `nnx.Param`) to every `Dense` whose dotted module path, e.g.
"text.layers.0.attn.q_proj", fully matches `LoraConfig.targets`.
`CXRTrekNet` does this at construction when `ModelConfig.lora` is set, so a
checkpoint restores into a model built from the same config.

Trainable parameters: every LoRA parameter, plus the base parameters of the
towers not listed in `ModelConfig.frozen`. Use the filter with NNX
(`nnx.Optimizer(model, tx, wrt=trainable_filter(cfg))`, `nnx.DiffState`) so
the optimizer keeps no state for frozen weights, or `trainable_mask` for an
optax-style boolean pytree.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from flax import nnx

from cxrtrek_jax.model.config import LoraConfig, ModelConfig
from cxrtrek_jax.model.layers import Dense, LoraAdapter

__all__ = ["module_path", "apply_lora", "merge_lora", "trainable_filter", "trainable_mask"]


def module_path(path: tuple) -> str:
    """Dotted form of an NNX graph path, e.g. ('text', 'layers', 0, 'attn') -> 'text.layers.0.attn'."""
    return ".".join(str(part) for part in path)


def apply_lora(model: nnx.Module, cfg: LoraConfig, *, rngs: nnx.Rngs) -> tuple[str, ...]:
    """Attach adapters to the matching dense layers of `model` (in place).

    Returns the dotted paths adapted; raises ValueError when nothing matches
    or a matching layer already has an adapter.
    """
    pattern = re.compile(cfg.targets)
    dense_paths = [(module_path(path), node) for path, node in nnx.iter_graph(model) if isinstance(node, Dense)]
    matched = [(path, node) for path, node in dense_paths if pattern.fullmatch(path)]
    if not matched:
        examples = ", ".join(path for path, _ in dense_paths[:6])
        raise ValueError(f"LoRA targets {cfg.targets!r} match no dense layer; paths look like: {examples}, ...")
    for path, node in matched:
        if node.lora is not None:
            raise ValueError(f"dense layer {path} already has a LoRA adapter")
        node.lora = LoraAdapter(node.in_shape, node.out_shape, in_names=node.in_names, out_names=node.out_names,
                                rank=cfg.rank, scale=cfg.scale, dropout=cfg.dropout, rngs=rngs)
    return tuple(path for path, _ in matched)


def merge_lora(model: nnx.Module) -> tuple[str, ...]:
    """Fold every adapter into its base kernel (kernel += a @ b * scale) and remove it, in place.

    Also drops `lora` from `model.config` when the model has one, so the
    merged model is described by its config. Returns the merged paths.
    """
    merged = []
    for path, node in list(nnx.iter_graph(model)):
        if isinstance(node, Dense) and node.lora is not None:
            node.kernel[...] = node.kernel[...] + node.lora.delta()
            node.lora = None
            merged.append(module_path(path))
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig) and config.lora is not None:
        model.config = dataclasses.replace(config, lora=None)
    return tuple(merged)


def trainable_filter(cfg: ModelConfig) -> Callable[[tuple, object], bool]:
    """NNX filter (path, variable) -> bool selecting the trainable parameters under `cfg`."""
    frozen = frozenset(cfg.frozen)

    def is_trainable(path: tuple, variable: object) -> bool:
        if isinstance(variable, nnx.LoRAParam):
            return True
        return isinstance(variable, nnx.Param) and str(path[0]) not in frozen

    return is_trainable


def trainable_mask(params: nnx.State, cfg: ModelConfig) -> nnx.State:
    """Boolean pytree shaped like the parameter state `params`: True where trainable."""
    is_trainable = trainable_filter(cfg)
    return nnx.map_state(lambda path, variable: variable.replace(is_trainable(path, variable)), params)
