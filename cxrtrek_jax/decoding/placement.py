"""Where decoding runs: one device (the default), or the (data, fsdp, tensor) mesh of training's
`MeshConfig` over every device of every process.

    mesh = decode_mesh(MeshConfig(fsdp=4, tensor=2))      # None for None: one device
    check_rows(batch_size, mesh)
    loaded = load_checkpoint_model(ckpt_dir, mesh=mesh)   # parameters sharded by the logical rules
    decoder = StepwiseDecoder(loaded.graphdef, loaded.config, spec, mesh=mesh)

On a mesh the rows of a decoding batch (its studies) are split across the data x fsdp groups, and
so across the processes those groups span; the parameters are sharded as the train step shards
them (`LOGICAL_AXIS_RULES`: the model width over fsdp, heads / MLP / vocabulary over tensor), the
KV cache along its rows and KV heads. Every process runs the same chain in lockstep (the same
studies in the same order, the same calls: SPMD), reads each turn's answers whole with
`StepwiseDecoder.fetch`, and so takes the same host-side decisions; `writes_outputs()` (process 0)
is the one that writes files and prints results.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train.sharding import MeshConfig

__all__ = ["decode_mesh", "check_rows", "writes_outputs", "describe_mesh", "bytes_per_device"]


def decode_mesh(config: MeshConfig | None) -> Mesh | None:
    """The mesh of `config` over every device of every process (`make_mesh`), None for None (one
    device). ValueError when the sizes do not match the device count."""
    return None if config is None else sharding_lib.make_mesh(config)


def check_rows(batch_size: int, mesh: Mesh | None) -> None:
    """ValueError unless `batch_size` rows split evenly over the mesh's data x fsdp groups (each
    group decodes batch_size / (data x fsdp) studies at a time)."""
    if mesh is None:
        return
    groups = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % groups:
        raise ValueError(f"batch size {batch_size} does not split over the mesh's data x fsdp = {groups} "
                         f"groups (studies are divided among them): use a multiple of {groups}")


def writes_outputs() -> bool:
    """Whether this process writes the run's files and prints its results: process 0 (the only
    process of a single-process run)."""
    return jax.process_index() == 0


def describe_mesh(mesh: Mesh | None) -> dict[str, int]:
    """The mesh as recorded with results: {"data", "fsdp", "tensor", "devices", "processes"}
    (one device: sizes 1)."""
    if mesh is None:
        return {"data": 1, "fsdp": 1, "tensor": 1, "devices": 1, "processes": 1}
    processes = len({device.process_index for device in mesh.devices.flat})
    return {**{axis: int(mesh.shape[axis]) for axis in sharding_lib.MESH_AXES},
            "devices": int(mesh.devices.size), "processes": processes}


def bytes_per_device(tree: Any) -> tuple[int, int]:
    """(the most bytes of `tree`'s arrays one local device holds, the bytes of the whole arrays):
    what sharding saves, e.g. a model state's parameters on a mesh."""
    held: dict[Any, int] = {}
    total = 0
    for array in jax.tree.leaves(tree):
        total += array.size * array.dtype.itemsize
        for shard in array.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.size * shard.data.dtype.itemsize
    return max(held.values(), default=0), total
