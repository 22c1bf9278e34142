"""`metrics.md`: the metrics dictionary as readable Markdown tables.

Cells read "value [low, high] n=N" (percentile interval of the study
bootstrap; "–" when a metric is undefined). Groups are rows, context modes
are columns whenever several were scored, followed by the blind baselines
(`metrics["baselines"]`, e.g. the majority answer) where they were scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS
from cxrtrek_jax.evaluation.metrics.error_propagation import COMPARISONS
from cxrtrek_jax.evaluation.metrics.families import HEADLINE_METRICS
from data_pipeline.schema.stages import Stage

__all__ = ["TABLE_METRICS", "render_markdown"]

TABLE_METRICS = HEADLINE_METRICS + ("closed_unparseable_rate", "detection_unparseable_rate")
_COMPARISON_TITLES = {
    "context_gain": "context gain (teacher − none)",
    "own_context_loss": "own-context loss (teacher − own)",
    "own_context_gain": "own-context gain (own − none)",
}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return ""
    text = _fmt(entry["value"])
    if entry.get("ci"):
        text += f" [{_fmt(entry['ci'][0])}, {_fmt(entry['ci'][1])}]"
    if "n" in entry:
        text += f" n={entry['n']}"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def _metric_rows(label: list[str], groups: list[Mapping | None], metrics: tuple[str, ...]) -> list[list[str]]:
    rows = []
    for metric in metrics:
        cells = [_cell(g["metrics"].get(metric)) if g else "" for g in groups]
        if any(cells):
            rows.append(label + [metric] + cells)
    return rows


def _stage_label(stage: str) -> str:
    return f"{stage} {Stage(int(stage)).title}"


def _grouped_section(title: str, kind: str, contexts: dict, label=lambda name: name) -> list[str]:
    names: list[str] = []
    for section in contexts.values():
        names += [n for n in section[kind] if n not in names]
    if kind == "by_stage":
        names.sort(key=int)
    if kind == "by_stage_qtype":
        names.sort(key=lambda n: (int(n.split("/", 1)[0]), n))
    rows = []
    for name in names:
        groups = [section[kind].get(name) for section in contexts.values()]
        rows += _metric_rows([label(name)], groups, TABLE_METRICS)
    return [f"## {title}", ""] + _table(["group", "metric", *contexts], rows)


def _identity_lines(identity: Mapping[str, Any]) -> list[str]:
    rows = [[key, f"`{value}`" if not isinstance(value, Mapping) else ", ".join(f"{k}={v}" for k, v in value.items())]
            for key, value in identity.items()]
    return ["## Identity", ""] + _table(["key", "value"], rows)


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    bootstrap = settings["bootstrap"]
    return [
        "## Settings",
        "",
        f"- intervals: {bootstrap['confidence']:.0%} {bootstrap['interval']} intervals from "
        f"{bootstrap['resamples']} bootstrap resamples of {bootstrap['unit']}, seed {bootstrap['seed']}",
        f"- METEOR: {settings['nlg']['meteor']}",
        f"- BLEU: {settings['nlg']['bleu']}; ROUGE-L: {settings['nlg']['rouge_l']}; CIDEr: {settings['nlg']['cider']}",
        f"- clinical efficacy: {settings['clinical_efficacy']['labeller']}, uncertain mentions counted as "
        f"{settings['clinical_efficacy']['uncertain_as']}; macro F1 = {settings['clinical_efficacy']['macro_f1']}",
        f"- detection: IoU threshold {settings['detection']['iou_threshold']}; {settings['detection']['matching']}",
        f"- closed-ended: {settings['closed_ended']['unparseable_predictions']}",
        "",
    ]


def _ce_observation_lines(contexts: dict) -> list[str]:
    rows = []
    for observation in CHEXPERT_OBSERVATIONS:
        metric = f"ce_f1[{observation}]"
        entries = [(section["overall"] or {"metrics": {}})["metrics"].get(metric) for section in contexts.values()]
        if any(e is not None and e["value"] is not None for e in entries):
            rows.append([observation] + [_cell(e) for e in entries])
    if not rows:
        return []
    return ["## Clinical efficacy F1 per observation (all report items)", ""] + _table(
        ["observation", *contexts], rows
    )


def _comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    rows = []
    for group, metrics in comparison.items():
        for metric, by_name in metrics.items():
            rows.append([group, metric] + [_cell(by_name.get(name)) for name in COMPARISONS])
    if not rows:
        return []
    header = ["group", "metric"] + [_COMPARISON_TITLES[n] for n in COMPARISONS]
    return ["## Context modes compared (paired study bootstrap)", ""] + _table(header, rows)


def _error_lines(first_errors: Mapping[str, Any]) -> list[str]:
    contexts = list(first_errors)
    if not contexts:
        return []
    keys = list(next(iter(first_errors.values()))["first_error_stage"])
    dist_rows = [[key] + [str(first_errors[c]["first_error_stage"][key]) for c in contexts] for key in keys]
    lines = ["## Error propagation", "", "Studies by the first stage with a wrong closed-ended answer:", ""]
    lines += _table(["first wrong stage", *contexts], dist_rows)
    stages = sorted({s for c in contexts for s in first_errors[c]["later_stage_accuracy"]}, key=int)
    rows = []
    for stage in stages:
        row = [_stage_label(stage)]
        for c in contexts:
            entry = first_errors[c]["later_stage_accuracy"].get(stage, {})
            row += [_cell(entry.get("with_earlier_error")), _cell(entry.get("without_earlier_error"))]
        rows.append(row)
    header = ["stage"] + [f"{c}: {w}" for c in contexts for w in ("after an earlier error", "no earlier error")]
    lines += [
        "Closed-ended accuracy of each stage, for studies with and without a wrong answer at an earlier stage:",
        "",
    ]
    return lines + _table(header, rows)


def _generation_lines(contexts: dict) -> list[str]:
    fields = ("turns", "mean_generated_tokens", "mean_latency_s", "total_latency_s")
    rows = []
    for field in fields:
        values = [section["generation"][field] for section in contexts.values()]
        rows.append([field] + [_fmt(v) if isinstance(v, float) else str(v) for v in values])
    rows.append(["stop_reasons"] + [
        ", ".join(f"{k}: {v}" for k, v in section["generation"]["stop_reasons"].items()) or "–"
        for section in contexts.values()
    ])
    return ["## Decoding", ""] + _table(["", *contexts], rows)


def _problem_lines(problems: Mapping[str, Any]) -> list[str]:
    lines = ["## Excluded items", ""]
    if not problems["excluded_by_reason"]:
        return lines + ["None: every item was scored.", ""]
    lines += _table(["reason", "items"], [[r, str(n)] for r, n in problems["excluded_by_reason"].items()])
    examples = [[e["study_id"], str(e["turn_index"]), e["context"], e["reason"]] for e in problems["examples"]]
    return lines + ["First examples:", ""] + _table(["study", "turn", "context", "reason"], examples)


def render_markdown(metrics: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    """The whole `metrics.md` text for a metrics dictionary from `score_predictions`."""
    contexts = metrics["contexts"]
    columns = {**contexts, **{f"{name} baseline": b for name, b in metrics.get("baselines", {}).items()}}
    counts = metrics["counts"]
    lines = [
        "# CXRTrek evaluation",
        "",
        f"{counts['records']} turns from {counts['studies']} studies; context modes: {', '.join(contexts)}; "
        f"{counts['excluded_items']} items excluded (see the end).",
        "",
    ]
    lines += _identity_lines(identity) + _settings_lines(metrics["settings"])
    overall_rows = _metric_rows([], [s["overall"] for s in columns.values()], TABLE_METRICS)
    lines += ["## Overall", ""] + _table(["metric", *columns], overall_rows)
    lines += _grouped_section("By stage", "by_stage", columns, _stage_label)
    lines += _grouped_section("By task type", "by_task_type", columns)
    lines += _grouped_section("By question type", "by_qtype", columns)
    lines += _grouped_section("By stage and question type", "by_stage_qtype", columns)
    lines += _ce_observation_lines(contexts)
    lines += _comparison_lines(metrics["error_propagation"]["context_comparison"])
    lines += _error_lines(metrics["error_propagation"]["first_errors"])
    lines += _generation_lines(contexts) + _problem_lines(metrics["problems"])
    return "\n".join(lines).rstrip() + "\n"
