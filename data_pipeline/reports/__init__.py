"""Layer 2, report text: reading free-text radiology reports.

Modules: `chexpert_labeller` (a rule-based CheXpert-style labeller: mentions, negation,
uncertainty; its rules in `labeller_rules/*.json`). Imports only the schema layer.
"""

from data_pipeline.reports.chexpert_labeller import (
    CHEXPERT_OBSERVATIONS,
    ReportLabeller,
    ReportLabels,
    default_labeller,
)

__all__ = ["CHEXPERT_OBSERVATIONS", "ReportLabeller", "ReportLabels", "default_labeller"]
