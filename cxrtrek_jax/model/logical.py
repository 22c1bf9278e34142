"""Logical axis names and the activation-sharding hook.

Every parameter of the model carries a tuple of logical axis names as
metadata (`nnx.Param(..., sharding_names=names)`), and the main activations
pass through `constrain(x, names)`. A rules table maps logical names to mesh
axes, e.g.

    RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
             ("heads", "tensor"), ("kv_heads", "tensor"), ("vocab", "tensor"))

`constrain` is a no-op unless a table is active:

    with axis_rules(RULES, mesh):
        logits, _ = jitted_forward(...)   # traced inside the context

Names not in the table are replicated (mesh axis None). Within one array a
mesh axis is used at most once: a later name that maps to an already used
mesh axis is replicated instead. With a mesh given, a dimension whose size
the mapped mesh axes do not divide is replicated too (tiny models on many
devices).

Logical names used by the model (`AXIS_NAMES`):
  batch, length, cache_length   activations and the KV cache
  embed, mlp, vocab             widths (vision and text towers share them)
  heads, kv_heads, head_dim     attention
  patch                         vision tokens / position-embedding rows
  patch_height, patch_width, channel   the patch-embedding kernel
  lora_rank                     LoRA adapter rank
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS_NAMES", "AxisRules", "axis_rules", "active_rules", "logical_to_spec", "constrain"]

AXIS_NAMES = (
    "batch", "length", "cache_length", "embed", "mlp", "vocab", "heads", "kv_heads", "head_dim",
    "patch", "patch_height", "patch_width", "channel", "lora_rank",
)

MeshAxes = str | tuple[str, ...] | None
AxisRules = tuple[tuple[str, MeshAxes], ...]

_ACTIVE: contextvars.ContextVar[tuple[AxisRules, Mesh | None] | None] = contextvars.ContextVar(
    "cxrtrek_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Sequence[tuple[str, MeshAxes]], mesh: Mesh | None = None) -> Iterator[None]:
    """Activate `rules` (logical name -> mesh axis/axes/None) for `constrain`.

    With `mesh=None` the constraint uses a bare PartitionSpec, which needs an
    ambient mesh (`jax.set_mesh` / `jax.sharding.use_mesh`).
    """
    token = _ACTIVE.set((tuple((name, axes) for name, axes in rules), mesh))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_rules() -> AxisRules | None:
    """The active rules table, or None outside `axis_rules`."""
    active = _ACTIVE.get()
    return None if active is None else active[0]


def logical_to_spec(names: Sequence[str | None], rules: Sequence[tuple[str, MeshAxes]], *,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """The PartitionSpec for an array whose axes carry logical `names`.

    With `shape` and `mesh`, dimensions not divisible by their mesh axes are replicated.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        axes = table.get(name) if name is not None else None
        axes_tuple = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        divides = (shape is None or mesh is None
                   or shape[dim] % math.prod(mesh.shape[a] for a in axes_tuple) == 0)
        if not axes_tuple or used.intersection(axes_tuple) or not divides:
            spec.append(None)
            continue
        used.update(axes_tuple)
        spec.append(axes_tuple[0] if len(axes_tuple) == 1 else axes_tuple)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint of `x` by logical axis `names`; identity without active rules."""
    active = _ACTIVE.get()
    if active is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names {tuple(names)} for an array of rank {x.ndim}")
    rules, mesh = active
    spec = logical_to_spec(names, rules, shape=x.shape, mesh=mesh)
    sharding = spec if mesh is None else NamedSharding(mesh, spec)
    return jax.lax.with_sharding_constraint(x, sharding)
