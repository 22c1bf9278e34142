"""The error of the case report: bad input, with the file, study, turn or image named."""

from __future__ import annotations

__all__ = ["CaseReportError"]


class CaseReportError(ValueError):
    """Predictions, studies or images that cannot make a case report; the message says why."""
