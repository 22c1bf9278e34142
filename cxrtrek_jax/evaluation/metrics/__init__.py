"""Evaluation layer 1, metrics: pure functions of predictions and references.

Modules: `answer_parsing` (closed answers -> comparable values), `detection_metrics` (box IoU
matching), `nlg_metrics` (BLEU, ROUGE-L, METEOR, CIDEr-D), `clinical_efficacy` (label agreement of
reports, via `data_pipeline.reports`), `labeller_agreement`, `families` (what each kind of item
contributes), `bootstrap` (study-level intervals), `error_propagation`, and for the public sets
`auroc` (AUROC, F1), `detection_ap` (VOC average precision, mAP) and `vqa_answers`.
"""

from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS
from cxrtrek_jax.evaluation.metrics.answer_parsing import judge_closed_answer, parse_closed_answer
from cxrtrek_jax.evaluation.metrics.detection_metrics import score_detection

__all__ = ["CHEXPERT_OBSERVATIONS", "judge_closed_answer", "parse_closed_answer", "score_detection"]
