"""`cxrtrek data validate FILE [--image-root DIR] [--no-images] [--json]`.

Prints the counts of a CXRTrek JSON file (studies, QA pairs, per stage, task
type and qtype, images per study) and every problem; exit code 1 when there
are errors, 0 otherwise. Image files are checked only with `--image-root` and
without `--no-images`.
"""

from __future__ import annotations

import argparse
import json
import os

from cxrtrek_jax.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a CXRTrek JSON file and print its counts and every problem",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("file", metavar="FILE", help="CXRTrek JSON file (a JSON list; .gz allowed)")
    parser.add_argument("--image-root", metavar="DIR", help="folder the relative image paths live under")
    parser.add_argument("--no-images", action="store_true", help="skip the image file existence checks")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipeline.files.validation import validate_file

    if not os.path.isfile(args.file):
        raise CLIError(f"{args.file}: no such file")
    image_root = None if args.no_images else args.image_root
    if image_root is not None and not os.path.isdir(image_root):
        raise CLIError(f"--image-root {image_root}: no such directory")
    try:
        report = validate_file(args.file, image_root=image_root)
    except OSError as e:
        raise CLIError(f"{args.file}: cannot read: {e}") from e
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report, args.file, images_checked=image_root is not None))
    return 1 if report.errors else 0


def _table(title: str, counts: dict, unit: str = "") -> list[str]:
    lines = [f"{title}:"]
    if not counts:
        lines.append("  (none)")
    width = max((len(str(k)) for k in counts), default=0)
    lines += [f"  {str(k):<{width}}  {v}{unit}" for k, v in counts.items()]
    return lines


def format_report(report, path: str, *, images_checked: bool) -> str:
    """The human-readable report: counts, then every error and warning."""
    lines = [
        f"file: {path}",
        f"studies: {report.studies}",
        f"qa_pairs: {report.qa_pairs}",
        f"image files: {'checked' if images_checked else 'not checked'}",
    ]
    lines += _table("per stage", dict(report.per_stage))
    lines += _table("per task_type", dict(report.per_task_type))
    lines += _table("per qtype", dict(report.per_qtype))
    lines += _table("images per study", {f"{k} image(s)": v for k, v in report.images_per_study.items()}, " studies")
    lines.append(f"errors: {len(report.errors)}")
    lines += [f"  ERROR {p}" for p in report.errors]
    lines.append(f"warnings: {len(report.warnings)}")
    lines += [f"  WARNING {p}" for p in report.warnings]
    lines.append("result: " + ("FAILED" if report.errors else "OK"))
    return "\n".join(lines)
