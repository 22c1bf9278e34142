"""The ablations: train and evaluate one named experiment, and collect finished runs into a report.

    python -m experiments.ablations run NAME [--preset P] [--force] [--set k=v ...]
    python -m experiments.ablations report

`run NAME` (what `make experiment-NAME` calls) resolves `experiments.get_experiment(NAME, P)` with
the `--set` overrides, trains it into `runs/NAME/` (config.json, checkpoints/, metrics.jsonl, ...;
an interrupted run resumes) and evaluates the newest checkpoint on `cfg.eval.split` in the
experiment's `cfg.eval.contexts` into `runs/NAME/eval/` (predictions.jsonl, metrics.json,
metrics.md, stages.png; the `cxrtrek eval` decoding and scoring code). Evaluation asks the turns
the experiment trains on: with `data.stages` (report_only: stage 8) or `data.no_prior` (turns
needing prior-study images dropped) the test studies' turns are filtered the same way, written to
`runs/NAME/eval/studies.json` and evaluated from there. `runs/NAME/finished.json` then records the
requested config, steps, times and machine; running a finished experiment again does nothing
(with the same config) or refuses (with another), unless `--force` deletes the run first.

All experiments read the same data (`data.path`, by default the phantom set `runs/phantom`,
generated once), so their numbers are comparable. `report` writes `runs/ablations.md` (one table:
experiment x context, the key metric of each stage) and `runs/ablations.png` (the same per-stage
values by experiment, one panel per context mode); registry experiments without a finished run
are listed as missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrtrek_jax.cli import CLIError
from cxrtrek_jax.cli.train_cmd import parse_overrides
from data_pipeline.text.sequences import filter_turns
from data_pipeline.files.split_rule import assign_split
from data_pipeline.schema.stages import STAGE_NUMBERS as STAGES

__all__ = [
    "FINISHED_FILE",
    "KEY_METRICS",
    "RunRecord",
    "parse_overrides",
    "resolve_experiment",
    "filter_turns",
    "run_ablation",
    "collect_runs",
    "write_report",
    "main",
]

RUNS_DIR = "runs"
EVAL_DIR = "eval"
FINISHED_FILE = "finished.json"
EVAL_STUDIES_FILE = "studies.json"
# The metric shown for a stage: the first of these that the stage's questions have.
KEY_METRICS = (("accuracy", "accuracy"), ("mean_iou", "mean IoU"), ("rouge_l", "ROUGE-L"), ("bleu_4", "BLEU-4"))


# --- running one experiment -------------------------------------------------------------------

def resolve_experiment(name: str, preset: str, overrides: Mapping[str, str]):
    """The registry experiment `name` on model preset `preset` with the dotted-key overrides."""
    from experiments import get_experiment

    try:
        return get_experiment(name, preset).override(dict(overrides))
    except (KeyError, TypeError, ValueError) as err:
        raise CLIError(f"experiment {name!r} (preset {preset!r}): {err}") from None


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _with_defaults(stored: Mapping[str, Any]) -> Any:
    """A stored requested config with fields added since it was written filled in with their
    defaults (so a new field at its default is not a difference); the stored tree as it is
    when it no longer parses (then every changed key is reported)."""
    from cxrtrek_jax.train.config import ExperimentConfig

    try:
        return _as_json(ExperimentConfig.from_dict(stored).to_dict())
    except (TypeError, ValueError):
        return stored


def _machine() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {"host": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count()}


def _filtered_eval_file(cfg, json_file: Path, out: Path) -> dict[str, Any]:
    """Write the eval split's studies, their turns filtered as in training, to `out`; returns
    what was filtered (studies left without a turn are not evaluated and are counted)."""
    from data_pipeline.files.cxrtrek_json import iter_studies, write_studies

    stats = {"studies_kept": 0, "studies_without_turns": [], "turns_in": 0, "turns_kept": 0}

    def kept() -> Iterable:
        for study in iter_studies(json_file):
            if assign_split(study, cfg.data.split_rule) != cfg.eval.split:  # the rule the TFDS build used
                continue
            if cfg.eval.max_studies is not None and stats["studies_kept"] >= cfg.eval.max_studies:
                return
            filtered = filter_turns(study, cfg.data.pipeline.sequence.stages, cfg.data.pipeline.sequence.no_prior)
            stats["turns_in"] += len(study.items)
            stats["turns_kept"] += len(filtered.items)
            if not filtered.items:
                stats["studies_without_turns"].append(study.key)
                continue
            stats["studies_kept"] += 1
            yield filtered

    write_studies(out, kept())
    if stats["studies_kept"] == 0:
        raise CLIError(f"{json_file}: no study of split {cfg.eval.split!r} has a turn left after the "
                       f"experiment's filter (stages={cfg.data.pipeline.sequence.stages}, no_prior={cfg.data.pipeline.sequence.no_prior})")
    return stats


def _eval_data(cfg, data, eval_dir: Path):
    """(EvalData, turn filter description) for the run's evaluation."""
    from cxrtrek_jax.evaluation import EvalData

    d, seq = cfg.data, cfg.data.pipeline.sequence
    if seq.stages is None and not seq.no_prior:
        return EvalData(_source(cfg, data), split=cfg.eval.split, image_root=data.image_root,
                        max_studies=cfg.eval.max_studies, split_rule=_split_rule(cfg)), {"turns": "all"}
    if d.kind == "tfds":
        raise CLIError("data.kind=tfds: evaluating only the turns of data.pipeline.sequence.stages / without "
                       "prior images needs the CXRTrek JSON source (data.kind=json) to write the filtered "
                       "studies from")
    studies_file = eval_dir / EVAL_STUDIES_FILE
    stats = _filtered_eval_file(cfg, Path(data.json_files[0]), studies_file)
    description = {"turns": f"stages {list(seq.stages)} only" if seq.stages is not None else "all stages",
                   "no_prior": seq.no_prior, "studies_file": str(studies_file), **stats}
    if stats["studies_without_turns"]:
        print(f"note: {len(stats['studies_without_turns'])} {cfg.eval.split} studies have no turn after the "
              "filter and are not evaluated (listed in finished.json)")
    return EvalData(studies_file, split=cfg.eval.split, image_root=data.image_root,
                    split_rule=cfg.data.split_rule), description


def _split_rule(cfg):
    """The split rule of the run's JSON source (None for a TFDS one: fixed when it was built)."""
    return None if cfg.data.kind == "tfds" else cfg.data.split_rule


def _source(cfg, data) -> str:
    """The prepared data set the run's splits are read from."""
    return data.tfds_dir if cfg.data.kind == "tfds" else data.json_files[0]


def _evaluate(cfg, data, run_dir: Path, *, bootstrap_resamples: int, meteor: bool,
              progress: bool) -> dict[str, Any]:
    """`evaluate_checkpoint` of the run's newest checkpoint in cfg.eval.contexts into run_dir/eval,
    with the majority baseline fitted on the training split."""
    from tqdm.auto import tqdm

    from cxrtrek_jax.evaluation import EvalData, ScoringConfig, evaluate_checkpoint

    eval_dir = run_dir / EVAL_DIR
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    eval_dir.mkdir(parents=True)
    eval_data, turn_filter = _eval_data(cfg, data, eval_dir)
    baseline = EvalData(_source(cfg, data), split=cfg.data.train_split, image_root=data.image_root,
                        split_rule=_split_rule(cfg))
    bar = tqdm(unit="study", desc=f"evaluating {cfg.name}", disable=not progress)
    try:
        result = evaluate_checkpoint(
            cfg.checkpoint.directory or run_dir / "checkpoints", eval_data, eval_dir,
            contexts=cfg.eval.contexts, max_new_tokens=cfg.eval.max_new_tokens, baseline=baseline,
            scoring=ScoringConfig(bootstrap_resamples=bootstrap_resamples, meteor=meteor),
            identity={"experiment": cfg.name, "turn_filter": turn_filter},
            on_study=lambda *_: bar.update(1), progress=progress)
    finally:
        bar.close()
    counts = result.metrics["counts"]
    return {"contexts": list(cfg.eval.contexts), "split": cfg.eval.split, "studies": counts["studies"],
            "turns": counts["records"], "turn_filter": turn_filter,
            "turns_skipped_image_limit": result.identity["turns_skipped_image_limit"]}


def run_ablation(name: str, preset: str = "small", overrides: Mapping[str, str] | None = None, *,
                 runs_dir: str | os.PathLike = RUNS_DIR, force: bool = False, bootstrap_resamples: int = 1000,
                 meteor: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate experiment `name` into runs_dir/name; returns its finished record.

    A run already finished with the same requested config is left alone (its record is
    returned); one finished with another config is a CLIError unless `force`, which deletes the
    run dir first. Training that stops before its last step (pre-emption, data exhausted) is a
    CLIError and leaves the run unfinished (running again resumes it)."""
    from cxrtrek_jax.train.run import prepare_data, train_experiment

    overrides = dict(overrides or {})
    cfg = resolve_experiment(name, preset, overrides)
    requested = _as_json(cfg.to_dict())
    run_dir = Path(runs_dir) / name
    finished_file = run_dir / FINISHED_FILE
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if finished_file.exists():
        record = json.loads(finished_file.read_text())
        changed = _differences(_with_defaults(record["requested_config"]), requested)
        if changed:
            raise CLIError(f"{run_dir} finished with another config (differs in {', '.join(changed)}); "
                           "rerun with --force (make FORCE=1) to replace it")
        print(f"{name}: finished at step {record['final_step']} in {run_dir}; nothing to do (--force reruns)")
        return record
    if cfg.train.init_from and not Path(cfg.train.init_from).is_dir():
        raise CLIError(f"{name} starts from {cfg.train.init_from}, which does not exist: run that experiment "
                       "first (make experiment-baseline, then experiment-lora_r8)")
    began = time.time()
    result = train_experiment(cfg, run_dir, progress=progress)
    if result.stop_reason != "completed":
        raise CLIError(f"{name}: training stopped at step {result.final_step} of {cfg.train.num_steps} "
                       f"({result.stop_reason}); not evaluated, run again to resume")
    trained = time.time()
    evaluation = _evaluate(cfg, prepare_data(cfg), run_dir, bootstrap_resamples=bootstrap_resamples,
                           meteor=meteor, progress=progress)
    record = {
        "experiment": name, "description": cfg.description, "preset": preset, "overrides": overrides,
        "final_step": result.final_step, "last_train_loss": result.last_metrics.get("loss"),
        "train_seconds": round(trained - began, 1), "eval_seconds": round(time.time() - trained, 1),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "eval": evaluation, "requested_config": requested,
    }
    finished_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: trained {result.final_step} steps ({record['train_seconds']:.0f} s), evaluated "
          f"{evaluation['studies']} studies in {', '.join(evaluation['contexts'])} ({record['eval_seconds']:.0f} s) "
          f"-> {run_dir / EVAL_DIR}")
    return record


# --- the report -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One experiment's run as the report sees it: status "finished", "unfinished" (its dir
    exists without finished.json or eval/metrics.json) or "not run"; finished runs carry their
    finished.json record and eval/metrics.json."""

    name: str
    status: str
    record: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None


def collect_runs(runs_dir: str | os.PathLike = RUNS_DIR, names: Sequence[str] | None = None) -> list[RunRecord]:
    """Every registry experiment (or `names`) and any other finished run in runs_dir, in order."""
    from experiments import ABLATIONS

    runs_dir = Path(runs_dir)
    names = list(names or ABLATIONS)
    if runs_dir.is_dir():
        names += sorted(p.parent.name for p in runs_dir.glob(f"*/{FINISHED_FILE}") if p.parent.name not in names)
    out = []
    for name in names:
        finished, metrics = runs_dir / name / FINISHED_FILE, runs_dir / name / EVAL_DIR / "metrics.json"
        if finished.exists() and metrics.exists():
            out.append(RunRecord(name, "finished", json.loads(finished.read_text()), json.loads(metrics.read_text())))
        else:
            out.append(RunRecord(name, "unfinished" if (runs_dir / name).exists() else "not run"))
    return out


def _sections(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Context sections, then the blind baselines scored on the same turns ("majority baseline")."""
    return {**metrics["contexts"], **{f"{name} baseline": b for name, b in metrics.get("baselines", {}).items()}}


def _stage_value(metrics: Mapping[str, Any], context: str, stage: int, metric: str) -> float | None:
    entry = (_sections(metrics)[context]["by_stage"].get(str(stage)) or {"metrics": {}})["metrics"].get(metric)
    return None if entry is None else entry.get("value")


def _key_metrics(finished: Sequence[RunRecord]) -> dict[int, tuple[str, str]]:
    """stage -> (metric, label): the first of KEY_METRICS any finished run has a value of."""
    out = {}
    for stage in STAGES:
        for metric, label in KEY_METRICS:
            if any(_stage_value(r.metrics, c, stage, metric) is not None
                   for r in finished for c in r.metrics["contexts"]):
                out[stage] = (metric, label)
                break
    return out


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _markdown(runs: Sequence[RunRecord], keys: Mapping[int, tuple[str, str]], chart: str) -> str:
    finished = [r for r in runs if r.status == "finished"]
    stages = sorted(keys)
    lines = ["# Ablations", "",
             "Per-stage key metric of each finished run on its evaluation split (value; – = the run has no "
             "scored turn of that stage), and of the blind majority-answer baseline (fitted on the training "
             "split, constant normal report at stage 8) on the same turns. Each run's full tables and "
             "intervals: `runs/NAME/eval/metrics.md`.", "",
             "| experiment | context | preset | steps | " + " | ".join(f"S{s} {keys[s][1]}" for s in stages)
             + " | overall accuracy |",
             "|---|---|---|---:|" + "---:|" * len(stages) + "---:|"]
    for run in finished:
        for context, section in _sections(run.metrics).items():
            overall = ((section.get("overall") or {}).get("metrics") or {}).get("accuracy") or {}
            cells = [_cell(_stage_value(run.metrics, context, s, keys[s][0])) for s in stages]
            lines.append(f"| {run.name} | {context} | {run.record['preset']} | {run.record['final_step']} | "
                         + " | ".join(cells) + f" | {_cell(overall.get('value'))} |")
    lines += ["", f"Chart: `{chart}`.", "", "## Runs", ""]
    for run in finished:
        r, ev = run.record, run.record["eval"]
        machine = r["machine"]
        lines.append(f"- **{run.name}** ({r['description']}): {r['final_step']} steps, preset {r['preset']}, "
                     f"{ev['studies']} {ev['split']} studies / {ev['turns']} scored turns, evaluated turns: "
                     f"{_filter_text(ev['turn_filter'])}; trained {r['train_seconds']:.0f} s, evaluated "
                     f"{r['eval_seconds']:.0f} s on {machine['device_count']}x {machine['device_kind']} "
                     f"({machine['jax_backend']}); {len(r['overrides'])} config override(s) (finished.json)")
    missing = [r for r in runs if r.status != "finished"]
    lines += ["", "## Missing", ""]
    lines += [f"- {r.name}: {r.status}" for r in missing] or ["- none: every experiment has a finished run"]
    return "\n".join(lines) + "\n"


def _filter_text(turn_filter: Mapping[str, Any]) -> str:
    if turn_filter.get("turns") == "all":
        return "all"
    parts = [turn_filter["turns"]] + (["turns needing prior-study images removed"] if turn_filter["no_prior"] else [])
    dropped = len(turn_filter.get("studies_without_turns", []))
    return ", ".join(parts) + (f" ({dropped} studies left without a turn)" if dropped else "")


def _chart(runs: Sequence[RunRecord], keys: Mapping[int, tuple[str, str]], path: Path) -> None:
    """One panel per context mode: per-stage key metric, one bar per finished experiment."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finished = [r for r in runs if r.status == "finished"]
    contexts = [c for c in ("own", "teacher", "none") if any(c in r.metrics["contexts"] for r in finished)]
    stages = sorted(keys)
    figure = Figure(figsize=(max(6.0, 1.1 * len(stages) + 2), 3.2 * max(1, len(contexts)) + 0.6),
                    layout="constrained")
    FigureCanvasAgg(figure)
    if not contexts:
        figure.text(0.5, 0.5, "no finished ablation run", ha="center", va="center")
    colors = {r.name: f"C{i}" for i, r in enumerate(finished)}
    x = np.arange(len(stages))
    for i, context in enumerate(contexts):
        axes = figure.add_subplot(len(contexts), 1, i + 1)
        present = [r for r in finished if context in r.metrics["contexts"]]
        width = 0.8 / len(present)
        for j, run in enumerate(present):
            values = [_stage_value(run.metrics, context, s, keys[s][0]) for s in stages]
            axes.bar(x + (j - (len(present) - 1) / 2) * width,
                     [np.nan if v is None else v for v in values], width, label=run.name, color=colors[run.name])
        axes.set_xticks(x, [f"S{s}\n{keys[s][1]}" for s in stages])
        axes.set_title(f"context: {context}")
        axes.set_ylim(0.0, 1.0)
        axes.legend(fontsize="small", ncols=min(4, len(present)), loc="upper right")
    figure.savefig(path, dpi=110)


def write_report(runs_dir: str | os.PathLike = RUNS_DIR) -> tuple[Path, Path, list[RunRecord]]:
    """Write runs_dir/ablations.md and runs_dir/ablations.png; returns their paths and the runs."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(runs_dir)
    keys = _key_metrics([r for r in runs if r.status == "finished"])
    md, png = runs_dir / "ablations.md", runs_dir / "ablations.png"
    _chart(runs, keys, png)
    md.write_text(_markdown(runs, keys, png.name), encoding="utf-8")
    return md, png, runs


# --- command line -----------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablations",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate one experiment into runs/NAME")
    run.add_argument("name", help="registry experiment (cxrtrek_jax.train.registry)")
    run.add_argument("--preset", default="small", help="model preset (default small)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, repeatable (e.g. --set train.num_steps=100)")
    run.add_argument("--force", action="store_true", help="delete a finished (or partial) run and redo it")
    run.add_argument("--runs-dir", default=RUNS_DIR, help="where runs live (default runs)")
    run.add_argument("--bootstrap-resamples", type=int, default=1000, help="study-bootstrap replicates")
    run.add_argument("--meteor", action="store_true", help="also score METEOR (needs Java; ~20 s start)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    report = commands.add_parser("report", help="runs/ablations.md + runs/ablations.png from the finished runs")
    report.add_argument("--runs-dir", default=RUNS_DIR, help="where runs live (default runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            md, png, runs = write_report(args.runs_dir)
            missing = [r.name for r in runs if r.status != "finished"]
            print(f"wrote {md} and {png}: {len(runs) - len(missing)} finished run(s)"
                  + (f"; missing: {', '.join(missing)}" if missing else ""))
            return 0
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1])  # Grain workers read absl flags
        run_ablation(args.name, args.preset, parse_overrides(args.sets), runs_dir=args.runs_dir,
                     force=args.force, bootstrap_resamples=args.bootstrap_resamples, meteor=args.meteor,
                     progress=not args.no_progress)
        return 0
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
