"""The optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, weight decay masked
off norms and biases, a learning-rate schedule per tower (vision, projector, text decoder), and
frozen parameters (LoRA / frozen towers) that get neither updates nor optimizer state.

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
    "TowerSchedule",
    "OptimConfig",
    "TOWER_NAMES",
    "tower_schedules",
    "tower_labels",
    "learning_rate_schedule",
    "decays_weight",
    "weight_decay_mask",
    "make_optimizer",
    "check_master_weights",
]

FROZEN = "frozen"

# Path components that mark a parameter as exempt from weight decay.
_NO_DECAY_NAMES = ("bias", "scale")
_NO_DECAY_SUBSTRINGS = ("norm",)


# The towers a parameter belongs to, by its top-level name in the model's parameter tree.
TOWER_NAMES = ("vision", "projector", "text")


@dataclasses.dataclass(frozen=True)
class TowerSchedule:
    """One tower's own schedule: its peak learning rate and warmup steps; None takes the
    `OptimConfig`'s value. The cosine decay to `final_lr_fraction` of the peak over `total_steps`
    is shared by all towers."""

    learning_rate: float | None = None
    warmup_steps: int | None = None

    def __post_init__(self):
        if self.learning_rate is not None and self.learning_rate < 0:
            raise ValueError(f"TowerSchedule.learning_rate must be >= 0 or None, got {self.learning_rate}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"TowerSchedule.warmup_steps must be >= 0 or None, got {self.warmup_steps}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + schedule + clipping + accumulation.

    learning_rate: peak learning rate, reached after `warmup_steps` (linear from 0).
    total_steps: length of the whole schedule (warmup included); cosine decay runs from the end of
      warmup to `total_steps`, ending at `learning_rate * final_lr_fraction`.
    weight_decay: decoupled (AdamW) decay, applied to matrices only (not norms / biases).
    clip_norm: global gradient-norm clip over the trainable parameters; None disables it.
    grad_accum_steps: micro-batches per optimizer step; the global batch must be divisible by it.
    vision, projector, text: each tower's own schedule (`TowerSchedule`; the parameters under
      the model's top-level `vision` / `projector` / `text`), e.g. `vision.learning_rate=1e-4`
      with `learning_rate=2e-3` trains the image side 20x more gently than the decoder. A
      parameter outside these towers follows `learning_rate` / `warmup_steps`.
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
    vision: TowerSchedule = TowerSchedule()
    projector: TowerSchedule = TowerSchedule()
    text: TowerSchedule = TowerSchedule()

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
        for name in TOWER_NAMES:
            warmup = getattr(self, name).warmup_steps
            if warmup is not None and self.total_steps <= warmup:
                raise ValueError(f"{name}.warmup_steps ({warmup}) must be below total_steps ({self.total_steps})")

    def tower(self, name: str) -> "OptimConfig":
        """This config with tower `name`'s learning rate and warmup in place of the shared ones."""
        schedule = getattr(self, name)
        return dataclasses.replace(
            self,
            learning_rate=self.learning_rate if schedule.learning_rate is None else schedule.learning_rate,
            warmup_steps=self.warmup_steps if schedule.warmup_steps is None else schedule.warmup_steps,
            vision=TowerSchedule(), projector=TowerSchedule(), text=TowerSchedule(),
        )


def learning_rate_schedule(config: OptimConfig) -> optax.Schedule:
    """Step -> learning rate: linear warmup 0 -> peak, then cosine decay to the final fraction
    (the shared schedule; `tower_schedules` gives each tower's)."""
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


_SHARED = "shared"


def tower_schedules(config: OptimConfig) -> dict[str, optax.Schedule]:
    """Tower name (and "shared" for parameters outside the towers) -> its learning-rate schedule."""
    out = {name: learning_rate_schedule(config.tower(name)) for name in TOWER_NAMES}
    out[_SHARED] = learning_rate_schedule(config)
    return out


def tower_labels(params: Any, trainable: Any | None = None) -> Any:
    """Pytree of labels (same structure as `params`): the tower of each parameter (its top-level
    name if that is one of `TOWER_NAMES`, else "shared"), or "frozen" where `trainable` is False."""
    def label(path, _):
        name = _key_name(path[0]) if path else ""
        return name if name in TOWER_NAMES else _SHARED

    labels = jax.tree_util.tree_map_with_path(label, params)
    if trainable is None:
        return labels
    return jax.tree.map(lambda lab, t: lab if t else FROZEN, labels, trainable)


def make_optimizer(config: OptimConfig, trainable: Any | None = None) -> optax.GradientTransformation:
    """The optax transformation for `config`: global-norm clipping over the trainable gradients,
    then AdamW with each tower's own schedule (`tower_schedules`).

    trainable: optional pytree of bools matching the parameters (e.g. the model's LoRA /
      frozen-tower mask). Frozen parameters get `set_to_zero` updates and hold no optimizer
      state; clipping's global norm is over the trainable gradients only.
    """
    schedules = tower_schedules(config)

    def adamw(schedule):
        return optax.adamw(learning_rate=schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask)

    branches = {name: adamw(schedule) for name, schedule in schedules.items()}
    branches[FROZEN] = optax.set_to_zero()
    frozen = None if trainable is None else jax.tree.map(lambda t: not t, trainable)
    return optax.chain(
        # Frozen gradients are zeroed first so that they do not count towards the clipping norm.
        optax.masked(optax.set_to_zero(), frozen) if frozen is not None else optax.identity(),
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.multi_transform(branches, lambda params: tower_labels(params, trainable)),
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
