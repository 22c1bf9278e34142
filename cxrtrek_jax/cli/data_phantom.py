"""`cxrtrek data phantom --out DIR --studies N --seed S [--size 256] [--splits ...]`.

Generates a procedural phantom CXRTrek data set: 8-bit PNG images under
DIR/images/ and DIR/cxrtrek.json in the full released form, then prints a
short summary (studies, QA pairs, per stage, images, time, studies/s).

--splits assigns consecutive studies to splits, written as each study's
`split` field: fractions of --studies ("train=0.8,validation=0.1,test=0.1";
they must add up to 1, rounding remainders go to the first splits) or counts
("train=80,validation=10,test=10"; they must add up to --studies).
"""

from __future__ import annotations

import argparse
import collections
import time

from cxrtrek_jax.cli import CLIError
from data_pipeline.phantom.splits import parse_splits

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="generate a procedural phantom CXRTrek data set (images + JSON)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--studies", required=True, type=int, metavar="N", help="number of studies")
    parser.add_argument("--seed", required=True, type=int, metavar="S", help="random seed (non-negative)")
    parser.add_argument("--size", type=int, default=256, metavar="PX", help="image side in pixels (default 256)")
    parser.add_argument("--splits", metavar="SPEC", help="e.g. train=0.8,validation=0.1,test=0.1 or train=80,...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipeline.phantom import PhantomConfig, write_phantom_dataset

    if args.studies < 1:
        raise CLIError(f"--studies must be at least 1, got {args.studies}")
    if args.seed < 0:
        raise CLIError(f"--seed must be non-negative, got {args.seed}")
    try:
        config = PhantomConfig(size=args.size)
    except ValueError as e:
        raise CLIError(f"--size: {e}") from None
    try:
        split = parse_splits(args.splits, args.studies) if args.splits else None
    except ValueError as e:
        raise CLIError(f"--{e}") from None

    per_stage: collections.Counter[int] = collections.Counter()
    counts = {"studies": 0, "qa_pairs": 0, "images": 0}

    def count(study) -> None:
        counts["studies"] += 1
        counts["qa_pairs"] += len(study.items)
        counts["images"] += len(study.images)
        per_stage.update(item.stage for item in study.items)

    start = time.perf_counter()
    try:
        path = write_phantom_dataset(args.out, args.studies, args.seed, config, split, on_study=count)
    except OSError as e:
        raise CLIError(f"--out {args.out}: cannot write: {e}") from e
    seconds = time.perf_counter() - start
    print(f"wrote {path}")
    print(f"studies: {counts['studies']}  QA pairs: {counts['qa_pairs']}  images: {counts['images']}")
    print("per stage: " + "  ".join(f"{stage}:{per_stage[stage]}" for stage in sorted(per_stage)))
    if split:
        print("splits: " + "  ".join(f"{name}:{n}" for name, n in split.items()))
    print(f"time: {seconds:.2f} s  ({counts['studies'] / max(seconds, 1e-9):.1f} studies/s)")
    return 0
