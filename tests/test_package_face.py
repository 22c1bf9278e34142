"""The library's faces: `cxrtrek_jax` and each subpackage re-export their public names, and the
top-level face stays cheap to import."""

import importlib
import subprocess
import sys

import pytest

import cxrtrek_jax

FACES = ("cxrtrek_jax.model", "cxrtrek_jax.train", "cxrtrek_jax.hf", "cxrtrek_jax.decoding",
         "cxrtrek_jax.evaluation", "cxrtrek_jax.evaluation.metrics", "cxrtrek_jax.evaluation.scores",
         "cxrtrek_jax.evaluation.runs", "data_pipeline", "data_pipeline.schema", "data_pipeline.reports",
         "data_pipeline.files", "data_pipeline.text", "data_pipeline.batches")


@pytest.mark.parametrize("face", FACES)
def test_each_subpackage_face_exports_what_it_lists(face):
    module = importlib.import_module(face)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{face}.__all__ names {missing} it does not define"


def test_top_level_names_are_their_owners_objects():
    for name, owner in cxrtrek_jax._FACE.items():
        assert getattr(cxrtrek_jax, name) is getattr(importlib.import_module(f"cxrtrek_jax.{owner}"), name), name
    assert cxrtrek_jax.train is importlib.import_module("cxrtrek_jax.train")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cxrtrek_jax.nope  # noqa: B018


def test_importing_the_face_loads_no_jax():
    code = "import sys, cxrtrek_jax, cxrtrek_jax.cli; print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
