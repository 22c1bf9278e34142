"""`cxrtrek eval`: run the CXRTrek benchmark, or re-score a saved predictions file.

    cxrtrek eval --checkpoint CKPT --data CXRTREK_JSON_OR_TFDS [--split test] [--context all] --out DIR
    cxrtrek eval --predictions DIR/predictions.jsonl [--baseline-predictions DIR/baseline_predictions.jsonl] --out DIR2

With --checkpoint the model answers every turn of the data set's studies in
each context mode (`own`: its own answers are the context, `teacher`: the
reference answers, `none`: each question alone), streamed into
DIR/predictions.jsonl, which is then scored exactly as --predictions would
score it (re-scoring that file gives identical numbers), and a case report
DIR/report.html is written (whatever the form of --data). The data arguments
(--data, --image-root, --split, --val-fraction, --test-fraction, --split-seed)
are those of `infer` and `report` (`cxrtrek_jax.cli.data_args`): a study's
'split' field, else the patient hash split `data build-tfds` uses, so a JSON
file and the TFDS dir built from it give the same studies. Both write into DIR:
- metrics.json: identity (the predictions file's SHA-256, anything given
  with --identity, package versions), settings, metrics per context mode,
  stage, task type and qtype with study-bootstrap intervals, the context
  comparison, error propagation and the excluded items;
- metrics.md: the same as readable tables; stages.png: the per-stage chart;
- predictions.scored.jsonl: the records again with their per-turn scores.

With --checkpoint, a blind majority-answer baseline is fitted on the
references of --baseline-split (default train) of the same data and answers
the same turns (DIR/baseline_predictions.jsonl; stage-8 reports get a constant
normal report); it is scored alike and shown beside the model in
metrics.json ("baselines") and metrics.md. --baseline-split none skips it.

A checkpoint too large for one device decodes on a mesh, as training shards it: `--set mesh.fsdp=4
--set mesh.tensor=2` (training's mesh keys; `cxrtrek_jax.cli.mesh_args`), across processes with
training's --coordinator/--num-processes/--process-id (each process runs the same command; every
process reads --data, process 0 writes DIR). --batch-size counts the studies of the whole mesh and
must split over its data x fsdp groups. The predictions are those of one device.

"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cxrtrek_jax.cli import CLIError
from cxrtrek_jax.cli.data_args import add_data_arguments, open_data, split_from, split_rule_from
from cxrtrek_jax.cli.mesh_args import add_mesh_arguments, decode_mesh_from
from data_pipeline.schema.splits import TEST, TRAIN

REPORT_STUDIES = 8  # studies shown in the case report written by a --checkpoint run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score predictions: metrics.json, metrics.md, stages.png",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="JSONL", help="predictions file to score")
    source.add_argument("--checkpoint", metavar="CKPT", help="checkpoint dir to decode and score")
    add_data_arguments(parser, split_default=TEST, data_help="with --checkpoint")
    parser.add_argument("--context", default="all",
                        help="context mode(s) to run, comma-separated from own, teacher, none, swapped "
                             "(swapped: own with another study's images); all = own,teacher,none (default)")
    parser.add_argument("--order", default="given", choices=("given", "canonical"), help="turn order")
    parser.add_argument("--max-studies", type=int, default=None, help="evaluate at most this many studies")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="answer budget in tokens (default 96)")
    parser.add_argument("--batch-size", type=int, default=4, help="studies decoded together (default 4)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--baseline-split", default=TRAIN, metavar="SPLIT",
                        help="with --checkpoint: split the majority-answer baseline is fitted on "
                             "(default train; 'none' = no baseline)")
    parser.add_argument("--baseline-predictions", metavar="JSONL",
                        help="with --predictions: the baseline's predictions to score beside them")
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
    add_mesh_arguments(parser)
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


def _contexts(value: str) -> tuple[str, ...]:
    """--context's modes: "all" = own, teacher, none; else a comma-separated list of modes."""
    from cxrtrek_jax.contexts import CONTEXT_MODES

    if value == "all":
        return ("own", "teacher", "none")
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    unknown = [m for m in modes if m not in CONTEXT_MODES]
    if unknown or not modes:
        raise CLIError(f"--context {value!r}: unknown mode(s) {unknown}; choose from {', '.join(CONTEXT_MODES)} or all")
    return modes


def _scoring_config(args: argparse.Namespace):
    from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig

    try:
        return ScoringConfig(bootstrap_resamples=args.bootstrap_resamples, seed=args.seed,
                             confidence=args.confidence,
                             uncertain_as_positive=args.uncertain_as == "positive",
                             meteor=not args.no_meteor)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _evaluate_checkpoint(args: argparse.Namespace, scoring, extra_identity: dict) -> tuple[dict, list[Path]]:
    """--checkpoint: `evaluation.evaluate_checkpoint` into --out; (metrics, written files)."""
    from tqdm.auto import tqdm

    if not args.data:
        raise CLIError("--checkpoint needs --data (a CXRTrek JSON file or a TFDS data dir)")
    if args.baseline_predictions:
        raise CLIError("--baseline-predictions goes with --predictions (--checkpoint fits its own baseline)")
    mesh = decode_mesh_from(args)  # joins the processes first, before anything touches a device
    from cxrtrek_jax.case_report import write_evaluation_report
    from cxrtrek_jax.decoding.placement import writes_outputs
    from cxrtrek_jax.evaluation import EvalData, evaluate_checkpoint

    writes = writes_outputs()
    contexts = _contexts(args.context)
    dataset = open_data(args)
    data = EvalData(dataset, split=split_from(args), max_studies=args.max_studies)
    baseline = None
    if args.baseline_split != "none":
        try:
            baseline = EvalData(dataset, split=args.baseline_split)
        except ValueError as err:
            raise CLIError(f"--baseline-split {args.baseline_split}: {err}") from None
    bar = tqdm(unit="study", desc="decoding", disable=args.no_progress or not writes)

    def on_study(context: str, study_id: str) -> None:
        bar.set_postfix(context=context, refresh=False)
        bar.update(1)

    try:
        result = evaluate_checkpoint(
            args.checkpoint, data, args.out, contexts=contexts, order=args.order,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, baseline=baseline,
            scoring=scoring, identity=extra_identity, on_study=on_study, progress=not args.no_progress,
            mesh=mesh)
        if not writes:
            return result.metrics, []
        report = write_evaluation_report(args.out, data, max_studies=REPORT_STUDIES)
    except (FileNotFoundError, ValueError) as err:
        message = str(err)
        if baseline is not None and message.startswith("baseline split"):
            message = f"--baseline-split {args.baseline_split}: {message}"
        raise CLIError(message) from None
    finally:
        bar.close()
    return result.metrics, [*result.written, report]


def _score_file(args: argparse.Namespace, scoring, extra_identity: dict) -> tuple[dict, list[Path]]:
    """--predictions (and --baseline-predictions): score a saved file into --out."""
    from cxrtrek_jax.evaluation.scores.answer_baselines import BASELINE_NAME, score_baseline
    from cxrtrek_jax.evaluation.runs.evaluate import SCORED_PREDICTIONS_FILE
    from cxrtrek_jax.evaluation.scores.outputs import file_sha256, write_metrics
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions
    from cxrtrek_jax.evaluation.scores.scoring import score_predictions

    if args.data is not None or args.image_root is not None or split_rule_from(args) is not None:
        raise CLIError("--data, --image-root and the split flags go with --checkpoint "
                       "(to re-score, --predictions alone)")
    if args.mesh_overrides or args.coordinator or args.num_processes is not None or args.process_id is not None:
        raise CLIError("--set mesh.* and the multi-process flags go with --checkpoint (re-scoring decodes nothing)")
    path = Path(args.predictions)
    if not path.is_file():
        raise CLIError(f"--predictions {path}: no such file")
    if args.baseline_predictions and not Path(args.baseline_predictions).is_file():
        raise CLIError(f"--baseline-predictions {args.baseline_predictions}: no such file")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"predictions": str(path), "predictions_sha256": file_sha256(path)}
    metrics = score_predictions(read_predictions(path), scoring, scored_path=out / SCORED_PREDICTIONS_FILE,
                                progress=not args.no_progress)
    if args.baseline_predictions:
        metrics["baselines"] = {BASELINE_NAME: score_baseline(args.baseline_predictions, scoring)}
        identity["baseline"] = {"predictions": args.baseline_predictions, "fitted_on": None}
    paths = write_metrics(out, metrics, {**identity, **extra_identity})
    return metrics, [*paths.values(), out / SCORED_PREDICTIONS_FILE]


def run(args: argparse.Namespace) -> int:
    from cxrtrek_jax.evaluation.metrics.nlg_metrics import MeteorUnavailable
    from cxrtrek_jax.evaluation.scores.predictions import PredictionFormatError

    scoring = _scoring_config(args)
    extra_identity = _load_identity(args.identity)
    try:
        if args.checkpoint is not None:
            metrics, written = _evaluate_checkpoint(args, scoring, extra_identity)
        else:
            metrics, written = _score_file(args, scoring, extra_identity)
    except (PredictionFormatError, ValueError) as err:
        raise CLIError(str(err)) from None
    except MeteorUnavailable as err:
        raise CLIError(f"{err}; rerun with --no-meteor to score without METEOR") from None
    if not metrics:  # a process other than 0 of a run across processes: it decoded its share
        import jax

        print(f"process {jax.process_index()} of {jax.process_count()}: decoded its share; process 0 writes "
              f"{args.out}")
        return 0
    counts = metrics["counts"]
    print(
        f"scored {counts['records']} turns from {counts['studies']} studies "
        f"({counts['excluded_items']} excluded); METEOR: {metrics['settings']['nlg']['meteor']}"
    )
    for path in written:
        print(f"wrote {path}")
    return 0
