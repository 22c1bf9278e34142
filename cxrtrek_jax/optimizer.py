"""The optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, weight decay masked
off norms and biases, and frozen parameters (LoRA / frozen towers) that get neither updates nor
optimizer state.

Parameters are fp32 "master weights" (the model computes in its own `dtype`, e.g. bf16 on TPU);
`check_master_weights` refuses anything else. Gradient accumulation over micro-batches happens
inside the train step (`OptimConfig.grad_accum_steps`), so the update is exactly that of the whole
global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OptimConfig",
    "learning_rate_schedule",
    "decays_weight",
    "weight_decay_mask",
    "vision_side_mask",
    "trainable_labels",
    "make_optimizer",
    "check_master_weights",
]

TRAINABLE = "trainable"
FROZEN = "frozen"

# Path components that mark a parameter as exempt from weight decay.
_NO_DECAY_NAMES = ("bias", "scale")
_NO_DECAY_SUBSTRINGS = ("norm",)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + schedule + clipping + accumulation.

    learning_rate: peak learning rate, reached after `warmup_steps` (linear from 0).
    total_steps: length of the whole schedule (warmup included); cosine decay runs from the end of
      warmup to `total_steps`, ending at `learning_rate * final_lr_fraction`.
    weight_decay: decoupled (AdamW) decay, applied to matrices only (not norms / biases).
    clip_norm: global gradient-norm clip over the trainable parameters; None disables it.
    grad_accum_steps: micro-batches per optimizer step; the global batch must be divisible by it.
    vision_lr_scale: factor on the learning rate of the vision tower and the projector (the
      parameters under `vision` / `projector`), e.g. 0.1 to move a vision tower more slowly
      than the decoder.
    """

    learning_rate: float = 2e-4
    warmup_steps: int = 100
    total_steps: int = 10_000
    final_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    grad_accum_steps: int = 1
    vision_lr_scale: float = 1.0

    def __post_init__(self):
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps ({self.total_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.vision_lr_scale < 0:
            raise ValueError(f"vision_lr_scale must be >= 0, got {self.vision_lr_scale}")


def learning_rate_schedule(config: OptimConfig) -> optax.Schedule:
    """Step -> learning rate: linear warmup 0 -> peak, then cosine decay to the final fraction."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.total_steps,
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def decays_weight(path: tuple[Any, ...], value: Any) -> bool:
    """Whether the parameter at `path` gets weight decay: matrices yes; biases, norm scales and
    any vector or scalar no (by name: a path component `bias`/`scale` or containing `norm`)."""
    names = [_key_name(e).lower() for e in path]
    if any(n in _NO_DECAY_NAMES for n in names):
        return False
    if any(s in n for n in names for s in _NO_DECAY_SUBSTRINGS):
        return False
    return jnp.ndim(value) >= 2


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools (same structure as `params`): True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(decays_weight, params)


_VISION_SIDE = ("vision", "projector")


def vision_side_mask(params: Any) -> Any:
    """Pytree of bools: True for parameters of the vision tower and the projector (top-level
    `vision` / `projector`)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _key_name(path[0]) in _VISION_SIDE, params)


def trainable_labels(trainable: Any) -> Any:
    """`multi_transform` labels ("trainable" / "frozen") from a pytree of bools."""
    return jax.tree.map(lambda t: TRAINABLE if t else FROZEN, trainable)


def make_optimizer(config: OptimConfig, trainable: Any | None = None) -> optax.GradientTransformation:
    """The optax transformation for `config`.

    trainable: optional pytree of bools matching the parameters (e.g. the model's LoRA /
      frozen-tower mask). Frozen parameters get `set_to_zero` updates and hold no optimizer
      state; clipping's global norm is over the trainable gradients only.
    """
    adamw = optax.chain(
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.adamw(
            learning_rate=learning_rate_schedule(config),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        ),
        optax.masked(optax.scale(config.vision_lr_scale), vision_side_mask)
        if config.vision_lr_scale != 1.0 else optax.identity(),
    )
    if trainable is None:
        return adamw
    return optax.multi_transform(
        {TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, trainable_labels(trainable)
    )


def check_master_weights(params: Any) -> None:
    """ValueError naming every parameter that is not float32 (master weights must be fp32)."""
    bad = [
        f"{jax.tree_util.keystr(path)}: {x.dtype}"
        for path, x in jax.tree_util.tree_leaves_with_path(params)
        if x.dtype != jnp.float32
    ]
    if bad:
        raise ValueError(
            "master weights must be float32 (set the model's param dtype, keep `dtype` for compute); "
            f"found {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}"
        )
