"""`cxrtrek report`: the self-contained HTML case report of a predictions file.

The studies and their images come from --data, a CXRTrek JSON file or a TFDS data dir, opened with
the data arguments every command shares (`cxrtrek_jax.cli.data_args`); --split (default all)
restricts them to one split by the one split rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrtrek_jax.cli import CLIError
from cxrtrek_jax.cli.data_args import add_data_arguments, open_data, split_from
from cxrtrek_jax.contexts import CONTEXT_MODES
from data_pipeline.files.datasets import EVERY_SPLIT


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the HTML case report of predictions (images with boxes, stages, answers)",
        description=(
            "Write one self-contained HTML page (images inlined, no external resources, opens offline "
            "in a browser) showing, per study, the current and prior images with the model's and the "
            "reference detection boxes, then every stage's turns with question, model answer, reference "
            "and a correct/incorrect mark for closed questions, under a per-stage summary."
        ),
    )
    parser.add_argument("--predictions", required=True, help="predictions JSONL file (one record per turn)")
    add_data_arguments(parser, split_default=EVERY_SPLIT, data_help="the predicted studies", required=True)
    parser.add_argument("--out", required=True, help="output HTML file")
    parser.add_argument(
        "--study", nargs="+", action="extend", metavar="ID", help="only these studies, in this order"
    )
    parser.add_argument(
        "--context", choices=CONTEXT_MODES, help="context mode to show (default: own if present, else teacher, else none)"
    )
    parser.add_argument("--max-studies", type=_positive_int, help="show at most N studies (the first ones)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="list predicted studies missing from the data and unloadable images as warnings instead of failing",
    )
    parser.add_argument("--max-image-side", type=_positive_int, default=512, help="longer image side in pixels (512)")
    parser.add_argument("--title", default="CXRTrek case report", help="page title")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from cxrtrek_jax.case_report import write_case_report
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions

    if not Path(args.predictions).is_file():
        raise CLIError(f"--predictions {args.predictions}: no such file")
    dataset, split = open_data(args), split_from(args)
    try:
        result = write_case_report(
            read_predictions(args.predictions),
            dataset.records(split),
            None,
            args.out,
            context=args.context,
            study_ids=args.study,
            max_studies=args.max_studies,
            allow_missing=args.allow_missing,
            max_image_side=args.max_image_side,
            title=args.title,
        )
    except (ValueError, OSError) as err:  # CaseReportError, PredictionFormatError, CXRTrekFormatError, ...
        raise CLIError(str(err)) from None
    for warning in result.warnings:
        print(f"cxrtrek report: warning: {warning}", file=sys.stderr)
    print(
        f"wrote {result.path}: {len(result.study_ids)} stud(ies), context {result.context!r}, "
        f"{len(result.warnings)} warning(s)"
    )
    return 0
