"""The `cxrtrek` command line: `cxrtrek <command> [<subcommand>] ...`.

Each command lives in its own module of this package, named in
`_COMMAND_MODULES`; a module exposes `register(subparsers)`, which adds its
parser(s) and sets `func` (a callable taking the parsed `argparse.Namespace`
and returning an exit code). Registering must stay cheap: heavy imports
(jax, torch, tfds) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "cxrtrek_jax.cli.data_cmd",
    "cxrtrek_jax.cli.tokenizer_cmd",
    "cxrtrek_jax.cli.train_cmd",
    "cxrtrek_jax.cli.report_cmd",
    "cxrtrek_jax.cli.eval_cmd",
    "cxrtrek_jax.cli.eval_external_cmd",
    "cxrtrek_jax.cli.infer_cmd",
    "cxrtrek_jax.cli.hf_cmd",
)


class CLIError(Exception):
    """A user-facing error: printed as `cxrtrek: error: <message>`, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrtrek",
        description="CXRTrek-JAX: staged chest X-ray vision-language reasoning.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CLIError as err:
        print(f"cxrtrek: error: {err}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
