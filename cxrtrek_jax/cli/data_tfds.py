"""`cxrtrek data build-tfds --json FILE... --image-root DIR --out DATA_DIR [--skip-invalid]
[--val-fraction F --test-fraction F --split-seed S] [--overwrite] [--processes N]`.

Builds the `cxrtrek` TFDS data set (array_record files, train/validation/test
splits) from CXRTrek JSON files and the image root; read it back with
``tfds.data_source("cxrtrek", data_dir=DATA_DIR)``. Splits come from a study's
`split` field when present, else from a hash of `pat_id` (patient-level): the one
rule `eval`, `infer` and `report` apply to a JSON file with the same flags. An
invalid sample stops the build unless --skip-invalid, which drops it and
lists it in the printed summary and in build_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os

from cxrtrek_jax.cli import CLIError
from cxrtrek_jax.cli.data_args import add_split_rule_arguments, split_rule_from


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-tfds",
        help="build the TFDS (array_record) data set from CXRTrek JSON files and images",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--json", nargs="+", required=True, metavar="FILE", help="CXRTrek JSON file(s)")
    parser.add_argument("--image-root", required=True, metavar="DIR", help="folder the relative image paths live under")
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="TFDS data dir to write into")
    parser.add_argument("--skip-invalid", action="store_true", help="drop invalid samples (listed in the summary)")
    add_split_rule_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing build of the same version")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="read and decode the images in N worker processes (default 1; same output)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipeline.files.cxrtrek_json import CXRTrekFormatError
    from data_pipeline.files.split_rule import SplitConfig
    from data_pipeline.files.tfds_builder import BuildOptions, InvalidSampleError, build_dataset

    for path in args.json:
        if not os.path.isfile(path):
            raise CLIError(f"--json {path}: no such file")
    if not os.path.isdir(args.image_root):
        raise CLIError(f"--image-root {args.image_root}: no such directory")
    split = split_rule_from(args) or SplitConfig()
    if args.processes < 1:
        raise CLIError(f"--processes must be at least 1, got {args.processes}")
    options = BuildOptions(json_files=tuple(args.json), split=split, skip_invalid=args.skip_invalid,
                           processes=args.processes)
    try:
        summary = build_dataset(options, args.image_root, args.out, overwrite=args.overwrite)
    except (InvalidSampleError, CXRTrekFormatError, FileExistsError) as e:
        raise CLIError(str(e)) from e
    print(format_summary(summary))
    return 0


def format_summary(summary) -> str:
    """The printed build summary: examples per split, then every dropped sample."""
    data = summary.to_json()
    lines = [f"dataset: {data['dataset_dir']}"]
    lines += [f"  {split}: {n} example(s)" for split, n in data["examples"].items()]
    lines.append(f"total: {data['total_examples']} example(s); warnings: {data['warnings']}")
    lists = data["image_lists"]
    if lists:
        names = {"relative": "data_dict.cxrtrek_data.image (relative to --image-root)",
                 "absolute": "the top-level absolute 'image' list, remapped under --image-root "
                             "(cxrtrek_data.image was empty)",
                 "none": "no image list (studies without images)"}
        lines.append("image paths read from:")
        lines += [f"  {names[kind]}: {n} stud(ies)" for kind, n in lists.items()]
    lines.append(f"dropped: {data['dropped_count']} sample(s)")
    lines += [f"  {field}: {n}" for field, n in data["dropped_by_field"].items()]
    for dropped in data["dropped"]:
        lines.append(f"  {dropped['json_file']} sample {dropped['index']} (study {dropped['study_id'] or '?'}):")
        lines += [f"    {reason}" for reason in dropped["reasons"]]
    if data["patients_in_several_splits"]:
        lines.append(
            f"WARNING: {len(data['patients_in_several_splits'])} patient(s) in several splits (from 'split' fields): "
            + json.dumps(data["patients_in_several_splits"][:20])
        )
    lines.append(f"summary: {os.path.join(data['dataset_dir'], 'build_summary.json')}")
    return "\n".join(lines)
