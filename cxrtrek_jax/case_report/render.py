"""The case report as one self-contained HTML page.

Everything is inline: CSS in a <style> element, images as data URIs inside
inline SVG; there is no script. A Content-Security-Policy meta element
(``default-src 'none'; img-src data:; style-src 'unsafe-inline'``) makes the
browser refuse any external resource, so the page works offline from a
``file://`` URL. Every text from the inputs (ids, questions, answers,
labels, paths, scores, warnings) goes through `html.escape`.

Layout: header (context shown, legend), warnings, the per-stage summary of
all shown studies, then (for several studies) a study index, and per study
its images (boxes drawn), its own per-stage summary (for several studies)
and its stages in order, each turn with question, model answer, reference
and, for closed questions, a correct/incorrect mark.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cxrtrek_jax.case_report.cases import CaseSelection, StudyCase
from cxrtrek_jax.case_report.image_overlay import (
    MODEL_BOX_COLOR,
    REFERENCE_BOX_COLOR,
    OverlayBox,
    PageImage,
    overlay_svg,
)
from cxrtrek_jax.case_report.summary import StageSummary, summarize_all, summarize_stages
from cxrtrek_jax.case_report.report_turns import ParsedBoxes, ReportTurn
from data_pipeline.schema.records import thaw
from data_pipeline.schema.stages import Stage

__all__ = [
    "ImagePanel",
    "STAGE_ACCENT_COLOR",
    "CONTENT_SECURITY_POLICY",
    "CONTEXT_DESCRIPTIONS",
    "render_case_report",
]

STAGE_ACCENT_COLOR = "#5b4fcf"  # the band left of every stage heading
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CONTEXT_DESCRIPTIONS = {
    "own": "earlier turns hold the model's own answers",
    "teacher": "earlier turns hold the reference answers (teacher forcing)",
    "none": "each turn answered without the earlier turns",
}

_CSS = f"""
*{{box-sizing:border-box}}
body{{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  background:#eef0f3;color:#1d2330}}
header{{background:#1d2330;color:#f5f6f8;padding:14px 24px}}
header h1{{margin:0 0 4px;font-size:22px}}
header p{{margin:2px 0}}
main{{padding:8px 24px 32px;max-width:1320px}}
section.panel,nav.panel,article.study{{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.12);
  margin:14px 0;padding:12px 16px}}
h2{{font-size:19px;margin:4px 0 8px}}
h3{{font-size:16px;margin:14px 0 6px;border-left:6px solid {STAGE_ACCENT_COLOR};padding:2px 0 2px 8px}}
table{{border-collapse:collapse;font-size:13px}}
th,td{{border-bottom:1px solid #dde1e7;padding:3px 10px;text-align:right}}
th:nth-child(2),td:nth-child(2){{text-align:left}}
tr.total td{{font-weight:600;border-top:2px solid #1d2330}}
.legend span.swatch{{display:inline-block;width:26px;height:0;vertical-align:middle;margin:0 4px 0 12px}}
.legend .model{{border-top:3px solid {MODEL_BOX_COLOR}}}
.legend .reference{{border-top:3px dashed {REFERENCE_BOX_COLOR}}}
.warnings{{border-left:6px solid #d97706}}
.warnings li{{margin:2px 0}}
.meta{{color:#5a6270;font-size:13px}}
.images{{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}}
figure{{margin:0;background:#000;border-radius:4px;padding:6px;flex:1 1 320px;max-width:540px}}
figure svg.xray{{display:block;width:100%;height:auto}}
figcaption{{color:#d8dbe0;font-size:12px;padding-top:4px;word-break:break-all}}
.missing-image{{color:#ffb4a8;padding:40px 12px;text-align:center}}
.turn{{border-top:1px solid #e3e6eb;padding:8px 0 8px 14px}}
.turn-head{{font-size:12px;color:#5a6270}}
.question{{font-weight:600;margin:3px 0;white-space:pre-wrap}}
.answers{{display:grid;grid-template-columns:1fr 1fr;gap:10px}}
.answer{{background:#f6f7f9;border-radius:4px;padding:4px 8px;white-space:pre-wrap;word-break:break-word}}
.answer .who{{display:block;font-size:11px;font-weight:700;text-transform:uppercase;color:#5a6270}}
.answer.model{{border-left:4px solid {MODEL_BOX_COLOR}}}
.answer.reference{{border-left:4px solid {REFERENCE_BOX_COLOR}}}
.mark{{display:inline-block;border-radius:3px;padding:0 6px;font-weight:700;margin-left:6px}}
.mark.correct{{background:#d4f4da;color:#0b6b21}}
.mark.incorrect{{background:#fde0dd;color:#a3180e}}
.mark.unscorable{{background:#fff1c2;color:#7a5600}}
.note{{font-size:12px;color:#5a6270;margin-top:3px}}
.note.problem{{color:#a3180e}}
nav ol{{columns:3;margin:4px 0}}
"""


@dataclasses.dataclass(frozen=True)
class ImagePanel:
    """One image of a study for the page.

    caption: e.g. "current view 1" or "prior view 1"; path: as listed in the data.
    image: the page image, None when it could not be loaded (`error` says why).
    boxes: the boxes to draw on it.
    """

    caption: str
    path: str
    image: PageImage | None
    error: str = ""
    boxes: tuple[OverlayBox, ...] = ()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(summary: StageSummary) -> str:
    accuracy = summary.accuracy
    if accuracy is None:
        return "—"
    return f"{100 * accuracy:.1f}% ({summary.correct}/{summary.scored})"


def _summary_row(summary: StageSummary, css_class: str = "") -> str:
    number = "" if summary.stage is None else str(summary.stage)
    row_class = f' class="{css_class}"' if css_class else ""
    return (
        f"<tr{row_class}><td>{number}</td><td>{_e(summary.title)}</td><td>{summary.turns}</td>"
        f"<td>{summary.closed}</td><td>{summary.scored}</td><td>{_percent(summary)}</td></tr>"
    )


def _summary_table(turns: Sequence[ReportTurn]) -> str:
    per_stage = summarize_stages(turns)
    rows = [_summary_row(s) for s in per_stage]
    rows.append(_summary_row(summarize_all(per_stage), "total"))
    return (
        '<table class="summary"><thead><tr><th>stage</th><th>title</th><th>turns</th>'
        "<th>closed</th><th>scored</th><th>closed accuracy</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _legend() -> str:
    return (
        '<p class="legend">Boxes: <span class="swatch model"></span>model (solid, label above)'
        '<span class="swatch reference"></span>reference (dashed, label below). '
        "Detection boxes are drawn on current view 1 (the first image of the study).</p>"
    )


def _mark(turn: ReportTurn) -> str:
    verdict = turn.verdict
    basis = "from the scorer's scores" if verdict.basis == "scores" else "by parsing the answers"
    if verdict.correct is True:
        return f'<span class="mark correct" title="{basis}">✓ correct</span>'
    if verdict.correct is False:
        return f'<span class="mark incorrect" title="{basis}">✗ incorrect</span>'
    if verdict.basis == "unscorable":
        return '<span class="mark unscorable">? reference answer not parseable</span>'
    return ""


def _format_score(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(thaw(value), ensure_ascii=False)
    return str(value)


def _box_note(who: str, parsed: ParsedBoxes | None) -> str:
    if parsed is None:
        return ""
    if parsed.error:
        return f'<div class="note problem">{_e(who)} boxes: {_e(parsed.error)}</div>'
    return f'<div class="note">{_e(who)}: {len(parsed.boxes)} box(es)</div>'


def _turn_notes(turn: ReportTurn) -> str:
    record = turn.record
    notes = [_box_note("model", turn.model_boxes), _box_note("reference", turn.reference_boxes)]
    # A closed turn's "correct" is shown as its mark.
    scores = {k: v for k, v in record.scores.items() if not (k == "correct" and turn.verdict.is_closed)}
    if scores:
        listed = ", ".join(f"{_e(k)}={_e(_format_score(v))}" for k, v in scores.items())
        notes.append(f'<div class="note">scores: {listed}</div>')
    stats = []
    if record.num_generated_tokens is not None:
        stats.append(f"{record.num_generated_tokens} tokens")
    if record.latency_s is not None:
        stats.append(f"{record.latency_s:.2f} s")
    if record.stop_reason is not None:
        stats.append(f"stop: {_e(record.stop_reason)}")
    if stats:
        notes.append(f'<div class="note">decoding: {" · ".join(stats)}</div>')
    return "".join(notes)


def _turn(turn: ReportTurn) -> str:
    record = turn.record
    return (
        '<div class="turn">'
        f'<div class="turn-head">turn {record.turn_index} · {_e(record.task_type)} · {_e(record.qtype)}'
        f"{_mark(turn)}</div>"
        f'<div class="question">{_e(record.question)}</div>'
        '<div class="answers">'
        f'<div class="answer model"><span class="who">model</span>{_e(record.prediction)}</div>'
        f'<div class="answer reference"><span class="who">reference</span>{_e(record.reference)}</div>'
        "</div>"
        f"{_turn_notes(turn)}</div>"
    )


def _stages(case: StudyCase, anchor: str) -> str:
    parts = []
    for stage in sorted({t.record.stage for t in case.turns}):
        turns = [t for t in case.turns if t.record.stage == stage]
        parts.append(
            f'<section class="stage" id="{anchor}-stage-{stage}">'
            f"<h3>Stage {stage} · {_e(Stage(stage).title)}</h3>"
            + "".join(_turn(t) for t in turns)
            + "</section>"
        )
    return "".join(parts)


def _figure(panel: ImagePanel, study_id: str) -> str:
    caption = f"{_e(panel.caption)} · {_e(panel.path)}"
    if panel.image is None:
        body = f'<div class="missing-image">image not available: {_e(panel.error)}</div>'
    else:
        image = panel.image
        body = overlay_svg(image, panel.boxes, description=f"study {study_id}, {panel.caption}")
        caption += f" · {image.source_width}×{image.source_height} px, page copy {image.width}×{image.height} px"
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def _study_meta(case: StudyCase) -> str:
    study = case.study
    facts = []
    if study is None:
        facts.append("not in the data: no images")
    else:
        for label, value in (
            ("patient", study.pat_id),
            ("source", study.source),
            ("prior study", study.ref_study_id),
            ("later study", study.pos_study_id),
        ):
            if value:
                facts.append(f"{label} {_e(value)}")
    facts.append(f"{len(case.turns)} turn(s)")
    if case.other_contexts:
        facts.append(f"also predicted with context: {_e(', '.join(case.other_contexts))}")
    return f'<p class="meta">{" · ".join(facts)}</p>'


def _study(case: StudyCase, panels: Sequence[ImagePanel], anchor: str, with_summary: bool) -> str:
    images = "".join(_figure(p, case.study_id) for p in panels)
    images_html = f'<div class="images">{images}</div>' if images else ""
    summary = (
        f"<details open><summary>per-stage summary of this study</summary>{_summary_table(case.turns)}</details>"
        if with_summary
        else ""
    )
    return (
        f'<article class="study" id="{anchor}"><h2>Study {_e(case.study_id)}</h2>'
        f"{_study_meta(case)}{images_html}{summary}{_stages(case, anchor)}</article>"
    )


def _index(cases: Sequence[StudyCase]) -> str:
    items = []
    for i, case in enumerate(cases, start=1):
        total = summarize_all(summarize_stages(case.turns))
        items.append(f'<li><a href="#study-{i}">{_e(case.study_id)}</a> · {_percent(total)}</li>')
    return f'<nav class="panel"><h2>Studies</h2><ol>{"".join(items)}</ol></nav>'


def render_case_report(
    selection: CaseSelection,
    panels: Mapping[str, Sequence[ImagePanel]],
    *,
    title: str = "CXRTrek case report",
    warnings: Sequence[str] = (),
) -> str:
    """The HTML page of `selection`.

    panels: study id -> its image panels (current views first); a study
        missing from the mapping is shown without images.
    warnings: problems to list at the top (escaped).
    """
    context = selection.context
    others = [m for m in selection.contexts_available if m != context]
    also = f" (also in the predictions: {', '.join(others)})" if others else ""
    all_turns = [t for case in selection.cases for t in case.turns]
    header = (
        f"<header><h1>{_e(title)}</h1>"
        f"<p>{len(selection.cases)} stud(ies) · {len(all_turns)} turn(s)</p>"
        f"<p>Context shown: <b>{_e(context)}</b> — {_e(CONTEXT_DESCRIPTIONS[context])}{_e(also)}</p>"
        "</header>"
    )
    body = [header, "<main>", f'<section class="panel">{_legend()}</section>']
    if warnings:
        listed = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        body.append(f'<section class="panel warnings"><h2>Warnings</h2><ul>{listed}</ul></section>')
    body.append(
        f'<section class="panel"><h2>Per-stage summary</h2>{_summary_table(all_turns)}</section>'
    )
    several = len(selection.cases) > 1
    if several:
        body.append(_index(selection.cases))
    for i, case in enumerate(selection.cases, start=1):
        body.append(_study(case, panels.get(case.study_id, ()), f"study-{i}", with_summary=several))
    body.append("</main>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
