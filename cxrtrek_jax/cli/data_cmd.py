"""`cxrtrek data ...`: the data subcommands, one module each, named in `_DATA_MODULES`.

Each module exposes `register(subparsers)` for the `data` group's subparsers.
"""

from __future__ import annotations

import argparse
import importlib

_DATA_MODULES: tuple[str, ...] = (
    "cxrtrek_jax.cli.data_validate",
    "cxrtrek_jax.cli.data_tfds",
    "cxrtrek_jax.cli.data_phantom",
    "cxrtrek_jax.cli.data_construct",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="validate, generate and build CXRTrek data")
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for name in _DATA_MODULES:
        importlib.import_module(name).register(data_sub)
