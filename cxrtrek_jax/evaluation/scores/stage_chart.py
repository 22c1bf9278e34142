"""`stages.png`: per-stage metrics, one bar per context mode, with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHART_METRICS", "plot_stages"]

CHART_METRICS = (
    ("accuracy", "closed-ended accuracy"),
    ("mean_iou", "detection mean IoU"),
    ("bleu_4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("meteor", "METEOR"),
    ("cider", "CIDEr-D"),
    ("ce_micro_f1", "clinical efficacy micro F1"),
)
_COLORS = {"own": "#d95f02", "teacher": "#1b9e77", "none": "#7570b3"}


def _panel_data(contexts: Mapping[str, Any], metric: str) -> tuple[list[str], dict[str, list]]:
    stages = sorted({s for c in contexts.values() for s in c["by_stage"]}, key=int)
    stages = [s for s in stages if any(
        (c["by_stage"].get(s) or {"metrics": {}})["metrics"].get(metric, {}).get("value") is not None
        for c in contexts.values()
    )]
    data = {}
    for name, section in contexts.items():
        data[name] = [(section["by_stage"].get(s) or {"metrics": {}})["metrics"].get(metric) for s in stages]
    return stages, data


def plot_stages(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Draw one panel per metric that some stage has; returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    contexts = metrics["contexts"]
    panels = [(m, title, *_panel_data(contexts, m)) for m, title in CHART_METRICS]
    panels = [p for p in panels if p[2]]
    columns = min(3, max(1, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    if not panels:
        figure.text(0.5, 0.5, "no stage has a scored metric", ha="center", va="center")
    width = 0.8 / max(1, len(contexts))
    for i, (_, title, stages, data) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, i + 1)
        x = np.arange(len(stages))
        for j, (context, entries) in enumerate(data.items()):
            values = np.array([np.nan if e is None or e["value"] is None else e["value"] for e in entries])
            low = np.array([v - e["ci"][0] if e and e.get("ci") else 0.0 for v, e in zip(values, entries)])
            high = np.array([e["ci"][1] - v if e and e.get("ci") else 0.0 for v, e in zip(values, entries)])
            errors = np.maximum(np.nan_to_num(np.stack([low, high])), 0.0)
            axes.bar(x + (j - (len(data) - 1) / 2) * width, values, width, yerr=errors,
                     capsize=2, label=context, color=_COLORS.get(context))
        axes.set_xticks(x, [f"stage {s}" for s in stages])
        axes.set_xlim(-0.6, len(stages) - 0.4)
        axes.set_title(title)
        axes.set_ylim(bottom=0.0)
        if i == 0:
            figure.legend(title="context", loc="outside upper center", ncols=len(data))
    path = Path(path)
    figure.savefig(path, dpi=110)
    return path
