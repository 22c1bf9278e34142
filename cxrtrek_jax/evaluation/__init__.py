"""Scoring CXRTrek predictions: answer parsing, metrics, CheXpert-style labels, error propagation.

Modules: `predictions` (the JSONL record contract), `answer_parsing`,
`detection_metrics`, `nlg_metrics`, `chexpert_labeller` (+ `labeller_rules/`),
`clinical_efficacy`, `families` (statistics per item kind), `bootstrap`,
`error_propagation`, `scoring` (`score_predictions`), `tables` (metrics.md),
`stage_chart` (stages.png) and `outputs` (`write_metrics`).
"""
