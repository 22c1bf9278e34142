"""Device mesh, logical-axis rules, and the shardings of parameters, optimizer state and batches.

The mesh has three named axes:

* `data`   — pure data parallelism (parameters replicated);
* `fsdp`   — data parallelism with parameters and optimizer state sharded (ZeRO-3 style);
* `tensor` — tensor (model) parallelism over heads / MLP width / vocabulary.

Model parameters and activations carry *logical* axis names (`batch`, `embed`, `mlp`, ...).
`LOGICAL_AXIS_RULES` maps each logical name to mesh axes; `partition_spec` turns a tuple of
logical names plus a concrete shape into a `PartitionSpec`. Two situations fall back to
replication for one dimension instead of failing, each logged once:

* the mesh axes assigned to a dimension do not divide its size (tiny models on 8 devices);
* a mesh axis is already used by an earlier dimension of the same array (e.g. an activation
  `[batch, length, embed]`: `batch` takes `fsdp`, so `embed` is left unsharded).

A logical name missing from the rules table is replicated, with a warning naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "MESH_AXES",
    "BATCH_MESH_AXES",
    "LOGICAL_AXIS_RULES",
    "MeshConfig",
    "make_mesh",
    "partition_spec",
    "tree_shardings",
    "opt_state_shardings",
    "replicated",
    "batch_sharding",
    "put_batch",
    "DistributedConfig",
    "initialize_distributed",
]

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over both data-parallel axes.
BATCH_MESH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
LogicalRules = tuple[tuple[str, MeshAxes], ...]

# Logical names are those of `cxrtrek_jax.model.logical.AXIS_NAMES`; FSDP shards the model width,
# tensor parallelism the heads / MLP width / vocabulary.
LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", BATCH_MESH_AXES),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("patch", None),
    ("patch_height", None),
    ("patch_width", None),
    ("channel", None),
    ("lora_rank", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the `data`, `fsdp` and `tensor` mesh axes.

    At most one size may be -1, meaning "all remaining devices". The product of the sizes must
    equal the number of devices the mesh is built on.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete (data, fsdp, tensor) sizes for `num_devices`; ValueError when impossible."""
        sizes = (self.data, self.fsdp, self.tensor)
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ValueError(f"mesh axis {name!r} must be a positive size or -1, got {size}")
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"mesh {dict(zip(MESH_AXES, sizes))}: fixed axes (product {known}) do not "
                    f"divide the {num_devices} devices"
                )
            sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                f"but {num_devices} are available"
            )
        return sizes  # type: ignore[return-value]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) over `devices` (default: all devices).

    On TPU the device order follows the physical topology (`mesh_utils`); elsewhere the devices
    are laid out in the order given (process-major, so `data` spans processes first).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.axis_sizes(len(devices))
    if devices[0].platform == "tpu" and len(devices) == jax.device_count():
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    else:
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def partition_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The `PartitionSpec` of an array with logical axis `names` and `shape` on `mesh`.

    names: one logical name (or None = replicated) per dimension; None for the whole array means
      fully replicated. Mesh axes of size 1 are dropped from the spec. Dimensions whose assigned
      mesh axes do not divide them drop trailing mesh axes until they do (possibly all).
    """
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"logical axis names {tuple(names)} do not match shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, dim in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            _warn_once(f"logical axis {name!r} has no sharding rule; replicating it")
            spec.append(None)
            continue
        wanted = [a for a in _as_tuple(table[name]) if mesh.shape[a] > 1]
        axes = [a for a in wanted if a not in used]
        if len(axes) < len(wanted):
            _warn_once(
                f"logical axis {name!r}: mesh axes {sorted(set(wanted) - set(axes))} already used by "
                f"another dimension of the same array (names {tuple(names)}); not sharding over them"
            )
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            dropped = axes.pop()
            _warn_once(
                f"logical axis {name!r} (size {dim}) is not divisible by mesh axis {dropped!r} "
                f"(size {mesh.shape[dropped]}); replicating over it"
            )
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def tree_shardings(
    shapes: Any,
    logical_names: Any,
    mesh: Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
) -> Any:
    """`NamedSharding`s for a pytree of arrays (or `ShapeDtypeStruct`s) from their logical names.

    shapes: pytree with array-like leaves (anything with `.shape`).
    logical_names: pytree of the same structure whose leaves are tuples of logical names (or
      None); tuples are treated as leaves.
    """
    return jax.tree.map(
        lambda names, x: NamedSharding(mesh, partition_spec(names, x.shape, mesh, rules)),
        logical_names,
        shapes,
        is_leaf=lambda n: n is None or isinstance(n, tuple),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that places a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(
    abstract_opt_state: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh
) -> Any:
    """Shardings for an optimizer state: per-parameter slots (Adam moments, ...) follow their
    parameter's sharding; everything else (step counts, ...) is replicated.

    A slot is matched to the parameter whose key path is the longest suffix of the slot's key
    path and whose shape equals the slot's (optax nests the parameter tree inside its states;
    frozen parameters have no slots at all).
    """
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_shardings = jax.tree.leaves(
        param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )
    if len(flat_params) != len(flat_shardings):
        raise ValueError(
            f"{len(flat_shardings)} parameter shardings for {len(flat_params)} parameters"
        )
    by_path = {
        tuple(path): (x.shape, sharding)
        for (path, x), sharding in zip(flat_params, flat_shardings)
    }

    def slot_sharding(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            shape, sharding = by_path.get(path[start:], (None, None))
            if sharding is not None and tuple(shape) == tuple(leaf.shape):
                return sharding
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(slot_sharding, abstract_opt_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of every batch field: leading (batch) dimension over `data` x `fsdp`."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def put_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Global `jax.Array`s from this process's slice of a batch.

    batch: field -> array whose leading dimension is this process's share of the global batch
      (the whole batch in a single-process run). The global batch size must be divisible by
      data x fsdp; a field that is not raises ValueError naming it.
    """
    sharding = batch_sharding(mesh)
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for name, local in batch.items():
        local = np.asarray(local)
        if local.ndim == 0:
            raise ValueError(f"batch field {name!r} is a scalar; every field needs a batch dimension")
        global_rows = local.shape[0] * jax.process_count()
        if global_rows % ways:
            raise ValueError(
                f"batch field {name!r}: global batch size {global_rows} is not divisible by "
                f"data x fsdp = {ways}"
            )
        global_shape = (global_rows, *local.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How to join a multi-process JAX job. All None = single process, unless the environment
    describes a TPU pod slice (then JAX's own auto-detection is used)."""

    coordinator: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def explicit(self) -> bool:
        return any(v is not None for v in (self.coordinator, self.num_processes, self.process_id))


def _in_multihost_tpu_environment(environ: Mapping[str, str]) -> bool:
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize_distributed(
    config: DistributedConfig,
    *,
    environ: Mapping[str, str] | None = None,
    initialize: Callable[..., None] | None = None,
) -> bool:
    """Call `jax.distributed.initialize` when configured; returns whether it did.

    Must run before any other JAX call that touches devices. CPU cross-process collectives use
    gloo. `environ`/`initialize` are injectable for tests.
    """
    environ = os.environ if environ is None else environ
    initialize = jax.distributed.initialize if initialize is None else initialize
    if config.explicit:
        missing = [
            f"--{n.replace('_', '-')}"
            for n in ("coordinator", "num_processes", "process_id")
            if getattr(config, n) is None
        ]
        if missing:
            raise ValueError(f"multi-process run needs {', '.join(missing)} as well")
        if not 0 <= config.process_id < config.num_processes:  # type: ignore[operator]
            raise ValueError(
                f"--process-id {config.process_id} is outside 0..{config.num_processes - 1}"  # type: ignore[operator]
            )
        # Only affects the CPU backend (which has no cross-process collectives without it).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        initialize(
            coordinator_address=config.coordinator,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
        return True
    if _in_multihost_tpu_environment(environ):
        initialize()
        return True
    return False
