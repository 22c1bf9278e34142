"""Writing an evaluation's files: metrics.json, metrics.md and stages.png."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrtrek_jax.evaluation.scores.stage_chart import plot_stages
from cxrtrek_jax.evaluation.scores.tables import render_markdown

__all__ = ["SCORING_PACKAGES", "package_versions", "file_sha256", "write_metrics"]

# Distributions whose versions can change the numbers.
SCORING_PACKAGES = ("cxrtrek-jax", "numpy", "nltk", "pycocoevalcap", "matplotlib")


def package_versions() -> dict[str, str]:
    """Python and scoring package versions ("not installed" where missing)."""
    versions = {"python": platform.python_version()}
    for name in SCORING_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any], identity: Mapping[str, Any]) -> dict[str, Path]:
    """Write metrics.json (identity first, then the metrics), metrics.md and stages.png.

    identity: what was scored (checkpoint / data / config hashes, the
    predictions file, ...), given by the caller; package versions are added
    here under identity["packages"]. Returns the written paths by name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full_identity = {**identity, "packages": package_versions()}
    paths = {
        "metrics.json": out_dir / "metrics.json",
        "metrics.md": out_dir / "metrics.md",
        "stages.png": out_dir / "stages.png",
    }
    document = {"identity": full_identity, **metrics}
    paths["metrics.json"].write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["metrics.md"].write_text(render_markdown(metrics, full_identity), encoding="utf-8")
    plot_stages(metrics, paths["stages.png"])
    return paths
