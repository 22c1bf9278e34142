"""The HTML case report a radiologist can look at (`cxrtrek report`).

`write_case_report(predictions, studies, image_root, out_path, ...)` writes
one self-contained page (images inlined, CSS inline, no script, no external
resource) with, per study, the images and their detection boxes, then the
stages in order with each turn's question, model answer, reference and
correct/incorrect mark, under a per-stage summary.

Modules: `cases` (selection, context, checks), `report_turns` (correctness and
boxes of a turn), `summary` (per-stage counts), `image_overlay` (page images
and box SVG), `render` (HTML), `report` (the whole, to a file).
"""

from cxrtrek_jax.case_report.cases import CaseSelection, StudyCase, choose_context, select_cases
from cxrtrek_jax.case_report.errors import CaseReportError
from cxrtrek_jax.case_report.report import CaseReportResult, write_case_report, write_evaluation_report

__all__ = [
    "CaseReportError",
    "CaseReportResult",
    "CaseSelection",
    "StudyCase",
    "choose_context",
    "select_cases",
    "write_case_report",
    "write_evaluation_report",
]
