"""The device-mesh and multi-process flags of `train`, `eval` and `infer`.

    cxrtrek eval ... --set mesh.fsdp=4 --set mesh.tensor=2
    cxrtrek eval ... --coordinator HOST:PORT --num-processes 2 --process-id I   (one per process)

`--coordinator/--num-processes/--process-id` join a multi-process JAX job (or the environment of a
TPU pod slice does), as `train` does. `eval` and `infer` take the mesh as `--set mesh.KEY=VALUE`
with the keys and meaning of training's `mesh` section (`MeshConfig`: data, fsdp, tensor; -1 = all
remaining devices; the sizes multiply to every device of every process). Without either they decode
on one device; with several processes and no `--set mesh.*`, on training's default mesh (fsdp over
every device).
"""

from __future__ import annotations

import argparse

from cxrtrek_jax.cli import CLIError

MESH_PREFIX = "mesh."


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """--coordinator, --num-processes, --process-id."""
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    """--set mesh.KEY=VALUE (repeatable) and the multi-process flags, for decoding commands."""
    parser.add_argument("--set", dest="mesh_overrides", action="append", default=[], metavar="mesh.KEY=VALUE",
                        help="decode on a device mesh, as training's mesh section: mesh.data, mesh.fsdp, "
                             "mesh.tensor (repeatable; e.g. --set mesh.fsdp=4 --set mesh.tensor=2); "
                             "default one device")
    add_distributed_arguments(parser)


def start_processes(args: argparse.Namespace) -> None:
    """Join the multi-process job the flags (or a TPU pod's environment) describe; before anything
    touches a device. CLIError for an incomplete or inconsistent set of flags."""
    from cxrtrek_jax.train.sharding import DistributedConfig, initialize_distributed

    try:
        initialize_distributed(DistributedConfig(args.coordinator, args.num_processes, args.process_id))
    except ValueError as err:
        raise CLIError(str(err)) from None


def mesh_config_from(args: argparse.Namespace):
    """The `MeshConfig` of --set mesh.* (training's defaults for the keys not set); None (one device)
    when none is set and this is a single-process run. CLIError naming a bad key or value."""
    import jax

    from cxrtrek_jax import config_tree
    from cxrtrek_jax.train.sharding import MeshConfig

    overrides = {}
    for item in args.mesh_overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.startswith(MESH_PREFIX):
            raise CLIError(f"--set {item!r}: eval and infer take mesh.KEY=VALUE (mesh.data, mesh.fsdp, "
                           "mesh.tensor), e.g. --set mesh.fsdp=4")
        overrides[key[len(MESH_PREFIX):]] = value
    if not overrides and jax.process_count() == 1:
        return None
    try:
        return config_tree.override(MeshConfig(), overrides)
    except ValueError as err:
        raise CLIError(f"--set: {err}") from None


def decode_mesh_from(args: argparse.Namespace):
    """`start_processes`, then the mesh to decode on (`decoding.placement.decode_mesh` of
    `mesh_config_from`; None = one device), checked against --batch-size; CLIError when it does not
    fit the devices or the batch."""
    start_processes(args)
    from cxrtrek_jax.decoding.placement import check_rows, decode_mesh

    try:
        mesh = decode_mesh(mesh_config_from(args))
        check_rows(args.batch_size, mesh)
    except ValueError as err:
        raise CLIError(f"--set mesh / --batch-size: {err}") from None
    return mesh
