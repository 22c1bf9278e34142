"""The data arguments of every command that reads a data set (`eval`, `infer`, `report`), defined once:

    --data PATH            a CXRTrek JSON file (with or without `split` fields) or a TFDS data dir
                           built by `cxrtrek data build-tfds`
    --image-root DIR       JSON: the folder its image paths are relative to (default: its folder)
    --split NAME           train, validation (val, valid), test, or all
    --val-fraction F --test-fraction F --split-seed S
                           JSON: the patient-hash split of the studies without a `split` field
                           (the defaults are `data build-tfds`'s; a TFDS dir's splits were fixed
                           when it was built, with the same rule)

Every command opens the data with `data_pipeline.files.datasets.open_dataset` and places studies
in splits by the one rule of `data_pipeline.files.split_rule`, so they agree on which study is in
which split. `cxrtrek train` takes the same as config keys: `data.kind` json/tfds, `data.path`,
`data.image_root`, `data.split_rule.{val_fraction,test_fraction,seed}`. Registering imports
nothing heavy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrtrek_jax.cli import CLIError
from data_pipeline.files.split_rule import SplitConfig

__all__ = ["add_data_arguments", "add_split_rule_arguments", "split_rule_from", "open_data", "split_from"]

# --flag -> SplitConfig field.
_RULE_FLAGS = {"val_fraction": "val_fraction", "test_fraction": "test_fraction", "split_seed": "seed"}


def add_split_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """--val-fraction, --test-fraction, --split-seed (unset = `SplitConfig`'s defaults)."""
    default = SplitConfig()
    parser.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help=f"fraction of patients in validation (default {default.val_fraction})")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help=f"fraction of patients in test (default {default.test_fraction})")
    parser.add_argument("--split-seed", type=int, default=None, metavar="S",
                        help=f"seed of the patient hash split (default {default.seed})")


def add_data_arguments(parser: argparse.ArgumentParser, *, split_default: str, data_help: str,
                       data_container: argparse._ActionsContainer | None = None, required: bool = False) -> None:
    """--data (into `data_container`, e.g. a mutually exclusive group; default the parser),
    --image-root, --split (default `split_default`) and the split-rule flags."""
    (data_container or parser).add_argument(
        "--data", metavar="PATH", required=required,
        help=f"{data_help}: a CXRTrek JSON file (with or without 'split' fields) or a TFDS data dir")
    parser.add_argument("--image-root", metavar="DIR", default=None,
                        help="root of a JSON file's image paths (default: its folder)")
    parser.add_argument("--split", default=split_default,
                        help="train, validation, test or all: a study's 'split' field, else the patient hash "
                             f"of --val-fraction/--test-fraction/--split-seed (default {split_default})")
    add_split_rule_arguments(parser)


def split_rule_from(args: argparse.Namespace) -> SplitConfig | None:
    """The split rule the flags give (unset fields at their defaults); None when none is given."""
    given = {field: getattr(args, flag) for flag, field in _RULE_FLAGS.items() if getattr(args, flag) is not None}
    if not given:
        return None
    try:
        return SplitConfig(**given)
    except ValueError as err:
        raise CLIError(str(err)) from None


def split_from(args: argparse.Namespace) -> str | None:
    """--split as a split name (None = all); CLIError for an unknown name."""
    from data_pipeline.files.datasets import parse_split

    try:
        return parse_split(args.split)
    except ValueError as err:
        raise CLIError(f"--split {args.split}: {err}") from None


def open_data(args: argparse.Namespace):
    """The `Dataset` of --data / --image-root / the split-rule flags; CLIError naming the flag at fault."""
    from data_pipeline.files.datasets import open_dataset

    if not Path(args.data).exists():
        raise CLIError(f"--data {args.data}: no such file or directory")
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise CLIError(f"--image-root {args.image_root}: no such folder")
    try:
        return open_dataset(args.data, image_root=args.image_root, split_rule=split_rule_from(args))
    except (FileNotFoundError, ValueError) as err:  # the message names the path
        raise CLIError(str(err)) from None
