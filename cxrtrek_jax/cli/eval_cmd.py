"""`cxrtrek eval --predictions predictions.jsonl --out DIR`: score a saved predictions file.

Recomputes every metric from the predictions file alone (the same file
gives the same numbers) and writes into DIR:
- metrics.json: identity (the predictions file's SHA-256, anything given
  with --identity, package versions), settings, metrics per context mode,
  stage, task type and qtype with study-bootstrap intervals, the context
  comparison, error propagation and the excluded items;
- metrics.md: the same as readable tables; stages.png: the per-stage chart;
- predictions.scored.jsonl: the records again with their per-turn scores.

The source of the records is chosen in `_records_source`: a model-driven
path (a checkpoint decoded over a data set in the `own`/`teacher`/`none`
context modes) plugs in there, yielding PredictionRecords and an identity.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrtrek_jax.cli import CLIError

SCORED_PREDICTIONS_FILE = "predictions.scored.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score predictions: metrics.json, metrics.md, stages.png",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--predictions", required=True, metavar="JSONL", help="predictions file to score")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--identity", metavar="JSON", help="JSON object file merged into the identity (checkpoint/data/config hashes)"
    )
    parser.add_argument(
        "--bootstrap-resamples", type=int, default=1000, help="study-bootstrap replicates (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    parser.add_argument(
        "--uncertain-as",
        choices=("positive", "negative"),
        default="positive",
        help="how uncertain CheXpert mentions count in clinical efficacy (default positive)",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the ~20 s Java start)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _load_identity(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        identity = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CLIError(f"--identity {path}: cannot read a JSON object: {err}") from None
    if not isinstance(identity, dict):
        raise CLIError(f"--identity {path}: must hold a JSON object, got {type(identity).__name__}")
    return identity


def _records_source(args: argparse.Namespace) -> tuple[Iterator, dict[str, Any]]:
    """The records to score and what identifies them."""
    from cxrtrek_jax.evaluation.outputs import file_sha256
    from cxrtrek_jax.evaluation.predictions import read_predictions

    path = Path(args.predictions)
    if not path.is_file():
        raise CLIError(f"--predictions {path}: no such file")
    identity = {"predictions": str(path), "predictions_sha256": file_sha256(path)}
    return read_predictions(path), identity


def run(args: argparse.Namespace) -> int:
    from cxrtrek_jax.evaluation.nlg_metrics import MeteorUnavailable
    from cxrtrek_jax.evaluation.outputs import write_metrics
    from cxrtrek_jax.evaluation.predictions import PredictionFormatError
    from cxrtrek_jax.evaluation.scoring import ScoringConfig, score_predictions

    try:
        config = ScoringConfig(
            bootstrap_resamples=args.bootstrap_resamples,
            seed=args.seed,
            confidence=args.confidence,
            uncertain_as_positive=args.uncertain_as == "positive",
            meteor=not args.no_meteor,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    extra_identity = _load_identity(args.identity)
    records, identity = _records_source(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics = score_predictions(
            records, config, scored_path=out / SCORED_PREDICTIONS_FILE, progress=not args.no_progress
        )
    except (PredictionFormatError, ValueError) as err:
        raise CLIError(str(err)) from None
    except MeteorUnavailable as err:
        raise CLIError(f"{err}; rerun with --no-meteor to score without METEOR") from None
    paths = write_metrics(out, metrics, {**identity, **extra_identity})
    counts = metrics["counts"]
    print(
        f"scored {counts['records']} turns from {counts['studies']} studies "
        f"({counts['excluded_items']} excluded); METEOR: {metrics['settings']['nlg']['meteor']}"
    )
    for path in [*paths.values(), out / SCORED_PREDICTIONS_FILE]:
        print(f"wrote {path}")
    return 0
