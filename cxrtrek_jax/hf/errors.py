"""The errors of Hugging Face interop (every family, the importer, the exporter) and the one config check
that raises them field by field."""

from __future__ import annotations

from typing import Any

__all__ = ["ExportError", "HFCheckpointError", "HFConfigError", "refuse"]


class HFConfigError(ValueError):
    """A Hugging Face config that CXRTrekNet cannot represent, or a model config no family exports."""


class HFCheckpointError(ValueError):
    """A tensor set or checkpoint directory that does not fit the config."""


class ExportError(ValueError):
    """A checkpoint or request that cannot be exported; the message says why."""


def refuse(condition: bool, field: str, value: Any, why: str) -> None:
    """Raise HFConfigError "cannot represent {field}={value!r}: {why}" when `condition` holds."""
    if condition:
        raise HFConfigError(f"cannot represent {field}={value!r}: {why}")
