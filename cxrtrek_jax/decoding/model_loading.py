"""The model of a checkpoint, the one loader for decoding, evaluation and export: config from its
metadata, parameters checked against it, the tokenizer directory and the question script it names.

    loaded = load_checkpoint_model(ckpt_dir)
    decoder = StepwiseDecoder(loaded.graphdef, loaded.config, spec)
    run_chain(decoder, loaded.state, load_tokenizer(loaded.tokenizer_dir), ...)
    model = loaded.model()           # a CXRTrekNet holding the parameters (export, merge_lora)

The checkpoint's metadata must hold a usable model config (`model_config`, as
written by `cxrtrek_jax.train.checkpointing`), or `CheckpointConfigError` says so;
every stored parameter must have the path and shape the config implies, or
`CheckpointMismatchError` lists each missing, unexpected and misshapen parameter. A checkpoint
trained with its images blanked (the text-only experiment, `data.pipeline.blank_images` of the
experiment in its metadata) says so in `CheckpointModel.blank_images`: its evaluation feeds the
same constant images (`blank_images_of`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from cxrtrek_jax.decoding.stepwise import param_shardings
from cxrtrek_jax.train import checkpointing
from cxrtrek_jax.model import CXRTrekNet, ModelConfig, from_dict

__all__ = ["CheckpointConfigError", "CheckpointMismatchError", "CheckpointModel", "load_checkpoint_model",
           "split_for_decoding", "tokenizer_dir_of", "question_script_of", "blank_images_of",
           "image_processing_of"]


class CheckpointConfigError(ValueError):
    """A checkpoint whose metadata holds no usable model config."""


class CheckpointMismatchError(ValueError):
    """Stored parameters that do not fit the model config."""


@dataclasses.dataclass(frozen=True)
class CheckpointModel:
    """config; graphdef + state (`nnx.split` of the whole model, LoRA adapters included); the
    checkpoint's metadata; the tokenizer directory it names (`tokenizer_dir_of`; None when it names none);
    the constant pixel value its training blanked every image to (`blank_images_of`; None = it
    trained on the images), which decoding must feed it too."""

    config: ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State
    metadata: Mapping[str, Any]
    tokenizer_dir: Path | None
    blank_images: float | None = None

    def model(self) -> CXRTrekNet:
        """A new CXRTrekNet holding the parameters (`nnx.merge`; changing it leaves `state` as it is)."""
        return nnx.merge(self.graphdef, self.state, copy=True)


def _flat_shapes(tree: Mapping, prefix: tuple = ()) -> dict[str, tuple[int, ...]]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat_shapes(value, (*prefix, key)))
        else:
            out["/".join(str(p) for p in (*prefix, key))] = tuple(value.shape)
    return out


def _check_shapes(expected: Mapping, stored: Mapping, where: str) -> None:
    want, have = _flat_shapes(expected), _flat_shapes(stored)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    misshapen = [f"{name} {have[name]} (config: {want[name]})" for name in sorted(set(want) & set(have))
                 if want[name] != have[name]]
    if missing or unexpected or misshapen:
        parts = [f"{label}: {', '.join(items)}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if items]
        raise CheckpointMismatchError(f"{where}: the parameters do not match the model config ({'; '.join(parts)})")


def split_for_decoding(config: ModelConfig, params: Mapping, *, where: str = "parameters",
                       ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, whole-model state) from a nested dict of parameter arrays, checked against `config`."""
    abstract = nnx.eval_shape(lambda: CXRTrekNet(config, rngs=nnx.Rngs(0)))
    graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
    _check_shapes(nnx.to_pure_dict(param_state), params, where)
    nnx.replace_by_pure_dict(param_state, params)
    if jax.tree.leaves(rest):  # e.g. LoRA dropout RNG state: build it for real (the parameter init is dead code)
        rest = jax.jit(lambda: nnx.split(CXRTrekNet(config, rngs=nnx.Rngs(0)), nnx.Param, ...)[2])()
    return nnx.split(nnx.merge(graphdef, param_state, rest))


def blank_images_of(metadata: Mapping[str, Any], where: str) -> float | None:
    """`data.pipeline.blank_images` of the experiment a checkpoint's metadata records (written by
    the trainer under "experiment"): the constant pixel value in [0, 1] that replaced every image
    in training (the text-only experiment), or None: trained on the images, or no experiment
    recorded (an imported or params-only checkpoint). ValueError naming `where` for a value that
    is not a pixel value."""
    from data_pipeline.batches.grain_pipeline import check_blank_value

    experiment = metadata.get("experiment") or {}
    value = ((experiment.get("data") or {}).get("pipeline") or {}).get("blank_images")
    check_blank_value(value, f"{where}: metadata experiment data.pipeline.blank_images")
    return None if value is None else float(value)


def tokenizer_dir_of(metadata: Mapping[str, Any], ckpt_dir: str | os.PathLike) -> Path | None:
    """The tokenizer directory a checkpoint's metadata names under "tokenizer_path" (written by
    the trainer, `save_params_only` and import-hf); a relative name is relative to the checkpoint
    directory. None when the metadata names none."""
    named = metadata.get("tokenizer_path")
    if not named:
        return None
    path = Path(named)
    return path if path.is_absolute() else Path(ckpt_dir) / path


def question_script_of(metadata: Mapping[str, Any], ckpt_dir: str | os.PathLike) -> Path | None:
    """The training data's question script (`data_pipeline.text.question_wording`) a checkpoint's
    metadata names under "question_script_path" (written by the trainer), relative to the
    checkpoint directory like the tokenizer's; None when it names none (a checkpoint trained
    before runs kept one, or imported from Hugging Face)."""
    named = metadata.get("question_script_path")
    if not named:
        return None
    path = Path(named)
    return path if path.is_absolute() else Path(ckpt_dir) / path


def load_checkpoint_model(ckpt_dir: str | os.PathLike, step: int | None = None, *,
                          mesh: Mesh | None = None) -> CheckpointModel:
    """The model of checkpoint `step` (default: the newest) on the first local device, or with
    `mesh` sharded over it as training shards it: each parameter read straight into its shards
    (by the logical axis names the checkpoint stores), then the whole state placed by the model's
    own names (`stepwise.param_shardings`; variables without names, e.g. LoRA's RNG, replicated).
    With a mesh spanning processes every process calls this, as with any global array.

    Raises FileNotFoundError for a missing checkpoint, CheckpointConfigError for metadata
    without a usable model config, CheckpointMismatchError for parameters that do not fit it.
    """
    metadata = checkpointing.read_metadata(ckpt_dir, step)
    if "model_config" not in metadata:
        raise CheckpointConfigError(f"checkpoint {ckpt_dir}: its metadata holds no model_config")
    try:
        config = from_dict(metadata["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointConfigError(f"checkpoint {ckpt_dir}: unusable model_config in its metadata: {err}") from err
    params = checkpointing.load_params(ckpt_dir, step, mesh=mesh)
    graphdef, state = split_for_decoding(config, params, where=f"checkpoint {ckpt_dir}")
    if mesh is not None:
        state = jax.device_put(state, param_shardings(state, mesh))
    return CheckpointModel(config, graphdef, state, metadata, tokenizer_dir_of(metadata, ckpt_dir),
                           blank_images_of(metadata, f"checkpoint {ckpt_dir}"))


def image_processing_of(tokenizer_dir: str | os.PathLike | None):
    """The image processing of a checkpoint that renders through its own chat template (imported from
    Hugging Face): its processor's preprocessor_config.json, kept next to its tokenizer at import
    (`ImageProcessing`: e.g. llava-1.5's shortest-edge resize and centre crop, Gemma 3's square resize);
    None for a model trained here (our resize with padding), or a tokenizer without that file.
    ValueError naming the file and key for a setting not reproduced."""
    from data_pipeline.files.image_processing import ImageProcessing
    from data_pipeline.text.checkpoint_template import TEMPLATE_FILE

    if tokenizer_dir is None:
        return None
    directory = Path(tokenizer_dir)
    config = directory / "preprocessor_config.json"
    if not (directory / TEMPLATE_FILE).exists() or not config.exists():
        return None
    return ImageProcessing.from_preprocessor_config(config)
