"""The ablation study's answers: paired study-bootstrap differences between runs, the per-stage
table, and runs/ablations.md, .png and .json.

Each answer (`ANSWERS`) is a metric of one (ablation, context) minus another's over the turns both
scored (`paired_differences.paired_difference`: studies resampled with replacement, both sides from
the same draw). Seeds are pooled: a test study of seed s is the unit `s/STUDY`, so each seed's
models are paired on the same studies and the interval covers seed-to-seed and study-to-study
variation alike. Turns are matched by (study, stage, question, reference) rather than by position,
so a run that evaluates fewer turns (report_only, no_prior) pairs with the turns it shares.
"no detectable effect" is said wherever the 95 % interval covers 0.

runs/ablations.json:
    {"seeds": [...],
     "runs": {NAME: {CONTEXT: {"accuracy", "baseline_accuracy", "swapped_accuracy", "image_gain",
                               "per_stage": {STAGE: {"metric", "value", "baseline", "swapped",
                                                     "with_earlier_error", "without_earlier_error"}}}}},
     "answers": [{"question", "metric", "difference", "ci_low", "ci_high", "n_studies", ...}]}
Values are means over the seeds that have the run; `swapped_accuracy` / `image_gain` (own minus
swapped) are given in the `own` context (swapped is the own chain with another study's images).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtrek_jax.evaluation.scores.answer_baselines import BASELINE_NAME
from cxrtrek_jax.evaluation.scores.paired_differences import PairedDifference, paired_difference
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, read_predictions
from data_pipeline.schema.stages import STAGE_NUMBERS
from experiments.ablation_table import ABLATION_TABLE, ablation_names

__all__ = ["Answer", "ANSWERS", "StudyRuns", "load_runs", "answer", "answers", "study_json", "write_study_report",
           "ANSWER_KEYS", "RUN_KEYS", "STAGE_KEYS", "CONFIDENCE"]

CONFIDENCE = 0.95
RESAMPLES = 1000
SCORED_FILE = "predictions.scored.jsonl"
ANSWER_KEYS = ("question", "metric", "difference", "ci_low", "ci_high", "n_studies")
RUN_KEYS = ("accuracy", "baseline_accuracy", "swapped_accuracy", "image_gain", "per_stage")
STAGE_KEYS = ("metric", "value", "baseline", "swapped", "with_earlier_error", "without_earlier_error")
# The metric a stage is shown with: the first of these it has.
STAGE_METRICS = ("accuracy", "mean_iou", "ce_micro_f1", "rouge_l")


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer: `metric` of run a in context a minus run b in context b, on the turns of
    `stages` (None = all) both scored. number: the study question (1-6) it answers."""

    number: int
    question: str
    a: tuple[str, str]
    b: tuple[str, str]
    metric: str = "accuracy"
    stages: tuple[int, ...] | None = None
    measures: str = ""


_LATER = (2, 3, 4, 5, 6, 7)
ANSWERS: tuple[Answer, ...] = (
    Answer(1, "Does staged context help?", ("grounded", "own"), ("no_context", "none"), stages=_LATER,
           measures="closed accuracy of stages 2-7, trained and run with the earlier stages in context minus each question alone"),
    Answer(1, "Does the clinical order help?", ("grounded", "own"), ("shuffled_stages", "own"), stages=_LATER,
           measures="closed accuracy of stages 2-7, trained in clinical order minus stages shuffled per study"),
    Answer(2, "What do the model's own mistakes cost?", ("grounded", "own"), ("grounded", "teacher"),
           measures="closed accuracy with its own earlier answers as context minus the reference answers"),
    Answer(3, "What does reading the image buy?", ("grounded", "own"), ("grounded", "swapped"),
           measures="closed accuracy with its own images minus another study's"),
    Answer(3, "What does a model that sees the images buy over one that never does?", ("grounded", "own"),
           ("blind", "own"), measures="closed accuracy of the grounded model minus the one trained and run on blank images"),
    Answer(3, "What does training the vision tower buy?", ("grounded", "own"), ("frozen_vision", "own"),
           measures="closed accuracy, trained tower minus a tower frozen at random initialisation"),
    Answer(4, "LoRA vs full fine-tuning?", ("lora_r8", "own"), ("grounded", "own"),
           measures="closed accuracy, LoRA r=8 chains minus full fine-tuning, from the same aligned start"),
    Answer(5, "What does the prior study's image buy?", ("grounded", "own"), ("no_prior", "own"), stages=(5,),
           measures="stage-5 closed accuracy on the turns both models answer, trained with the prior's images "
                    "minus without (no_prior drops the turns that need them)"),
    Answer(6, "Does training the earlier stages help the report?", ("grounded", "own"), ("report_only", "own"),
           metric="ce_micro_f1", stages=(8,),
           measures="stage-8 report label micro F1, trained as the end of the chain minus stage 8 alone"),
)


@dataclasses.dataclass(frozen=True)
class StudyRuns:
    """Finished runs: metrics[seed][name] (metrics.json), records[seed][name] (scored predictions)."""

    seeds: tuple[int, ...]
    metrics: Mapping[int, Mapping[str, Mapping[str, Any]]]
    records: Mapping[int, Mapping[str, Sequence[PredictionRecord]]]


def load_runs(root: str | Path) -> StudyRuns:
    """Every finished run under root/seedS/NAME (finished.json, eval/metrics.json and scored
    predictions); unfinished run dirs are named on the console and left out."""
    root = Path(root)
    metrics: dict[int, dict[str, Any]] = {}
    records: dict[int, dict[str, list[PredictionRecord]]] = {}
    for seed_dir in sorted(root.glob("seed*")):
        try:
            seed = int(seed_dir.name[4:])
        except ValueError:
            print(f"note: {seed_dir} is not a seedN directory; skipped")
            continue
        for run in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
            files = (run / "finished.json", run / "eval" / "metrics.json", run / "eval" / SCORED_FILE)
            if not all(f.exists() for f in files):
                print(f"note: {run} is unfinished (no {', '.join(f.name for f in files if not f.exists())}); left out")
                continue
            metrics.setdefault(seed, {})[run.name] = json.loads(files[1].read_text())
            records.setdefault(seed, {})[run.name] = list(read_predictions(files[2]))
    return StudyRuns(tuple(sorted(metrics)), metrics, records)


def _keyed(records: Sequence[PredictionRecord], context: str, seed: int) -> list[PredictionRecord]:
    """`context`'s records re-keyed for pairing across runs and seeds: study `seed/STUDY`, turn the
    CRC-32 of (stage, question, reference) plus its occurrence (module docstring)."""
    seen: dict[tuple[str, int], int] = {}
    out = []
    for r in records:
        if r.context != context:
            continue
        base = zlib.crc32(f"{r.stage}|{r.question}|{r.reference}".encode())
        occurrence = seen.get((r.study_id, base), 0)
        seen[(r.study_id, base)] = occurrence + 1
        out.append(r.replace(study_id=f"{seed}/{r.study_id}", turn_index=base * 16 + occurrence))
    return out


def answer(spec: Answer, runs: StudyRuns, *, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """One answer's entry (`ANSWER_KEYS` and its description); difference and interval None when
    no seed has both runs."""
    side_a, side_b, seeds = [], [], []
    for s in runs.seeds:
        have = runs.records[s]
        if spec.a[0] in have and spec.b[0] in have:
            side_a += _keyed(have[spec.a[0]], spec.a[1], s)
            side_b += _keyed(have[spec.b[0]], spec.b[1], s)
            seeds.append(s)
    select = (lambda r: True) if spec.stages is None else (lambda r: r.stage in spec.stages)
    paired: PairedDifference = paired_difference(side_a, side_b, spec.metric, select, resamples=resamples,
                                                 seed=seed, confidence=CONFIDENCE)
    ci = paired.ci if paired.turns else None
    return {"number": spec.number, "question": spec.question, "metric": spec.metric,
            "measures": spec.measures, "a": "/".join(spec.a), "b": "/".join(spec.b),
            "stages": list(spec.stages) if spec.stages else None,
            "value_a": paired.a, "value_b": paired.b, "difference": paired.difference,
            "ci_low": None if ci is None else float(ci[0]), "ci_high": None if ci is None else float(ci[1]),
            "n_studies": paired.studies, "n_turns": paired.turns, "seeds": seeds,
            "verdict": _verdict(paired.difference, ci)}


def _verdict(difference: float | None, ci: tuple[float, float] | None) -> str:
    if difference is None or ci is None:
        return "not measured (a run is missing or no turn is paired)"
    if ci[0] <= 0 <= ci[1]:
        return "no detectable effect"
    return "a detectable gain" if ci[0] > 0 else "a detectable loss"


def answers(runs: StudyRuns, *, resamples: int = RESAMPLES) -> list[dict[str, Any]]:
    return [answer(spec, runs, resamples=resamples) for spec in ANSWERS]


def _value(section: Mapping[str, Any] | None, metric: str) -> float | None:
    return ((((section or {}).get("metrics") or {}).get(metric)) or {}).get("value")


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _stage_metric(metrics_by_seed: Sequence[Mapping[str, Any]], context: str, stage: str) -> str | None:
    for metric in STAGE_METRICS:
        if any(_value(m["contexts"][context]["by_stage"].get(stage), metric) is not None for m in metrics_by_seed):
            return metric
    return None


def _run_entry(metrics_by_seed: Sequence[Mapping[str, Any]], context: str) -> dict[str, Any]:
    """One (run, context) entry of the JSON (`RUN_KEYS`), means over seeds."""
    def overall(m, ctx):
        return _value(m["contexts"].get(ctx, {}).get("overall"), "accuracy")

    def baseline(m):
        return m.get("baselines", {}).get(BASELINE_NAME, {})

    accuracy = _mean([overall(m, context) for m in metrics_by_seed])
    own = context == "own" and all("swapped" in m["contexts"] for m in metrics_by_seed)
    swapped = _mean([overall(m, "swapped") for m in metrics_by_seed]) if own else None
    per_stage = {}
    for stage in map(str, STAGE_NUMBERS):
        metric = _stage_metric(metrics_by_seed, context, stage)
        if metric is None:
            continue
        after = [m.get("error_propagation", {}).get("first_errors", {}).get(context, {})
                 .get("later_stage_accuracy", {}).get(stage, {}) for m in metrics_by_seed]
        per_stage[stage] = {
            "metric": metric,
            "value": _mean([_value(m["contexts"][context]["by_stage"].get(stage), metric) for m in metrics_by_seed]),
            "baseline": _mean([_value(baseline(m).get("by_stage", {}).get(stage), metric) for m in metrics_by_seed]),
            "swapped": _mean([_value(m["contexts"]["swapped"]["by_stage"].get(stage), metric)
                              for m in metrics_by_seed]) if own else None,
            "with_earlier_error": _mean([(a.get("with_earlier_error") or {}).get("value") for a in after]),
            "without_earlier_error": _mean([(a.get("without_earlier_error") or {}).get("value") for a in after]),
        }
    return {"accuracy": accuracy,
            "baseline_accuracy": _mean([_value(baseline(m).get("overall"), "accuracy") for m in metrics_by_seed]),
            "swapped_accuracy": swapped,
            "image_gain": None if swapped is None or accuracy is None else accuracy - swapped,
            "per_stage": per_stage}


def study_json(runs: StudyRuns, *, resamples: int = RESAMPLES) -> dict[str, Any]:
    """runs/ablations.json's content (module docstring)."""
    names = sorted({n for s in runs.seeds for n in runs.metrics[s]}, key=_table_order)
    out_runs = {}
    for name in names:
        by_seed = [runs.metrics[s][name] for s in runs.seeds if name in runs.metrics[s]]
        contexts = [c for c in by_seed[0]["contexts"] if c != "swapped"]
        out_runs[name] = {c: _run_entry(by_seed, c) for c in contexts}
    return {"seeds": list(runs.seeds), "runs": out_runs, "answers": answers(runs, resamples=resamples)}


def _table_order(name: str) -> tuple[int, str]:
    order = ablation_names()
    return (order.index(name) if name in order else len(order), name)


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _sentence(a: Mapping[str, Any]) -> str:
    interval = ("" if a["ci_low"] is None else f" (95 % CI {a['ci_low']:+.3f} to {a['ci_high']:+.3f}, "
                f"{a['n_studies']} study-seeds, {a['n_turns']} turns)")
    diff = "–" if a["difference"] is None else f"{a['difference']:+.3f}"
    return f"**{a['question']}** {a['measures']}: {diff}{interval}: {a['verdict']}."


def _main_context(name: str) -> str:
    return next((a.main_context for a in ABLATION_TABLE if a.name == name), "own")


def markdown(study: Mapping[str, Any], chart: str) -> str:
    lines = ["# Ablations", "", f"Seeds: {', '.join(map(str, study['seeds'])) or 'none'}. Every ablation is a "
             "difference from the `grounded` recipe (experiments/ablation_study.py); differences are paired by "
             "test study (study-bootstrap 95 % intervals, seeds pooled).", "", "## Answers", ""]
    lines += [f"- Q{a['number']}. {_sentence(a)}" for a in study["answers"]]
    lines += ["", "## Per stage (each run in its main context)", "",
              "value / swapped images / blind majority baseline; closed accuracy after an earlier wrong "
              "closed answer vs after none (error propagation).", "",
              "| run | context | overall acc | image gain | stage | metric | value | swapped | baseline | "
              "after error | no earlier error |", "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, contexts in study["runs"].items():
        context = _main_context(name)
        entry = contexts.get(context)
        if entry is None:
            continue
        for stage, s in entry["per_stage"].items():
            lines.append(f"| {name} | {context} | {_num(entry['accuracy'])} | {_num(entry['image_gain'])} | {stage} | "
                         f"{s['metric']} | {_num(s['value'])} | {_num(s['swapped'])} | {_num(s['baseline'])} | "
                         f"{_num(s['with_earlier_error'])} | {_num(s['without_earlier_error'])} |")
    lines += ["", "## Every context", "", "| run | context | accuracy | baseline | swapped | image gain |",
              "|---|---|---:|---:|---:|---:|"]
    for name, contexts in study["runs"].items():
        for context, e in contexts.items():
            lines.append(f"| {name} | {context} | {_num(e['accuracy'])} | {_num(e['baseline_accuracy'])} | "
                         f"{_num(e['swapped_accuracy'])} | {_num(e['image_gain'])} |")
    lines += ["", f"Chart: `{chart}`."]
    return "\n".join(lines) + "\n"


def chart(study: Mapping[str, Any], path: Path) -> None:
    """Top: each answer's difference with its interval; bottom: per-stage value of each run in
    its main context."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 8), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.add_subplot(2, 1, 1), figure.add_subplot(2, 1, 2)
    rows = study["answers"]
    y = np.arange(len(rows))
    diffs = [np.nan if a["difference"] is None else a["difference"] for a in rows]
    low = [0 if a["ci_low"] is None else a["difference"] - a["ci_low"] for a in rows]
    high = [0 if a["ci_high"] is None else a["ci_high"] - a["difference"] for a in rows]
    top.errorbar(diffs, y, xerr=[low, high], fmt="o", capsize=3)
    top.axvline(0.0, color="grey", lw=0.8)
    top.set_yticks(y, [f"{a['number']}. {a['a']} - {a['b']} ({a['metric']})" for a in rows], fontsize="small")
    top.invert_yaxis()
    top.set_title("answers: paired difference, 95 % study-bootstrap interval")
    names = list(study["runs"])
    stages = [str(s) for s in STAGE_NUMBERS]
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        entry = study["runs"][name].get(_main_context(name)) or {"per_stage": {}}
        values = [(entry["per_stage"].get(s) or {}).get("value") for s in stages]
        bottom.bar(np.arange(len(stages)) + (j - (len(names) - 1) / 2) * width,
                   [np.nan if v is None else v for v in values], width, label=name)
    bottom.set_xticks(np.arange(len(stages)), [f"S{s}" for s in stages])
    bottom.set_ylim(0, 1)
    bottom.set_title("per stage, main context (accuracy, IoU, report label F1 or ROUGE-L)")
    if names:
        bottom.legend(fontsize="small", ncols=4)
    figure.savefig(path, dpi=100)


def write_study_report(root: str | Path, out: str | Path = "runs", *, resamples: int = RESAMPLES) -> tuple[Path, ...]:
    """out/ablations.md, .png and .json from the finished runs under `root`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = study_json(load_runs(root), resamples=resamples)
    md, png, js = out / "ablations.md", out / "ablations.png", out / "ablations.json"
    chart(study, png)
    md.write_text(markdown(study, png.name), encoding="utf-8")
    js.write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    return md, png, js
