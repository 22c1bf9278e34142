"""CXRTrekNet <-> a Hugging Face checkpoint of any family in the table (`families`): configs,
tensors, checkpoint directories (config.json + safetensors), and the PyTorch model of an exported
directory. Each function looks its family up once, by the model config or by config.json's
`model_type`, and does the rest with what the family declares.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from cxrtrek_jax.hf import families
from cxrtrek_jax.hf.errors import HFCheckpointError
from cxrtrek_jax.hf.safetensors_dir import DEFAULT_MAX_SHARD_BYTES, read_safetensors_dir, write_safetensors_dir
from cxrtrek_jax.hf.tensor_specs import TensorSpec, state_from_tensors, tensors_from_params
from cxrtrek_jax.model import ModelConfig

__all__ = [
    "from_hf_config",
    "from_hf_tensors",
    "hf_tensor_specs",
    "load_hf_checkpoint",
    "load_torch_model",
    "read_model_type",
    "save_hf_checkpoint",
    "to_hf_config",
    "to_hf_tensors",
]


def to_hf_config(cfg: ModelConfig, **token_ids: Any):
    """The transformers config of `cfg` in its family (`token_ids`: bos/eos/pad and family ids)."""
    return families.family_for_config(cfg).to_hf_config(cfg, **token_ids)


def from_hf_config(hf_config: Any, *, max_images: int = 1, dtype: str = "float32") -> ModelConfig:
    """Our `ModelConfig` for a transformers config (or its config.json dict) of any family."""
    model_type = hf_config.get("model_type") if isinstance(hf_config, Mapping) else getattr(hf_config, "model_type",
                                                                                            None)
    family = families.family_for_model_type(model_type, "the Hugging Face config")
    return family.from_hf_config(hf_config, max_images=max_images, dtype=dtype)


def hf_tensor_specs(cfg: ModelConfig, *, vision_head: bool = False) -> list[TensorSpec]:
    """Every HF tensor of the checkpoint for `cfg` in its family, in checkpoint order."""
    return families.family_for_config(cfg).tensor_specs(cfg, vision_head)


def to_hf_tensors(params: Any, cfg: ModelConfig, *, dtype: str = "float32") -> dict[str, np.ndarray]:
    """HF tensors (checkpoint names of the family of `cfg`) from our parameters.

    params: the model's `nnx.Param` state, its pure dict, or the model.
    LoRA adapters must be merged first (`merge_lora`). dtype: "float32",
    "bfloat16" or "float16".
    """
    family = families.family_for_config(cfg)
    return tensors_from_params(params, family.tensor_specs(cfg, False), dtype=dtype)


def from_hf_tensors(tensors: Mapping[str, Any], cfg: ModelConfig, *, vision_head: bool = False) -> nnx.State:
    """Our parameter state (float32, with axis-name metadata) from the HF tensors of the family of `cfg`
    (`tensor_specs.state_from_tensors`). `vision_head=True` accepts (and drops) the SigLIP
    pooling-head tensors of a `vision_use_head=True` checkpoint."""
    family = families.family_for_config(cfg)
    return state_from_tensors(tensors, family.tensor_specs(cfg, vision_head), cfg, family.layout)


def save_hf_checkpoint(params: Any, cfg: ModelConfig, directory: str, *, dtype: str = "float32",
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, **token_ids: int | None) -> list[str]:
    """Write config.json and the safetensors of a `transformers` checkpoint of the family of `cfg`.

    `token_ids` (bos_token_id, eos_token_id, pad_token_id, and the family's own, e.g. Gemma 3's
    boi_token_id) go to its `to_hf_config`. Returns the file names written.
    """
    family = families.family_for_config(cfg)
    hf_config = family.to_hf_config(cfg, **token_ids)
    tensors = tensors_from_params(params, family.tensor_specs(cfg, False), dtype=dtype)
    hf_config.dtype = dtype
    os.makedirs(directory, exist_ok=True)
    hf_config.to_json_file(os.path.join(directory, "config.json"))
    return ["config.json", *write_safetensors_dir(tensors, directory, max_shard_bytes=max_shard_bytes)]


def read_model_type(directory: str | os.PathLike) -> tuple[str, str | None]:
    """(path of config.json, its `model_type`) of a checkpoint directory."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise HFCheckpointError(f"{directory} has no config.json")
    with open(config_path) as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise HFCheckpointError(f"{config_path}: expected a JSON object")
    return config_path, config.get("model_type")


def load_hf_checkpoint(directory: str, *, max_images: int = 1, dtype: str = "float32",
                       ) -> tuple[ModelConfig, nnx.State]:
    """(ModelConfig, parameter state) of a local `transformers` checkpoint directory of any family
    in the table, chosen by config.json's `model_type`."""
    config_path, model_type = read_model_type(directory)
    family = families.family_for_model_type(model_type, config_path)
    hf_config = family.hf_class(family.config_class).from_json_file(config_path)
    cfg = family.from_hf_config(hf_config, max_images=max_images, dtype=dtype)
    vision_head = bool(getattr(getattr(hf_config, "vision_config", None), "vision_use_head", False))
    tensors = read_safetensors_dir(directory)
    return cfg, state_from_tensors(tensors, family.tensor_specs(cfg, vision_head), cfg, family.layout)


def load_torch_model(export_dir: str | os.PathLike):
    """The PyTorch model (`from_pretrained`, in eval mode) of a Hugging Face directory such as
    `export_checkpoint` writes: the `model_class` of the family its config.json's `model_type` names,
    e.g. `LlavaForConditionalGeneration` or `Gemma3ForConditionalGeneration`. Reads safetensors
    only (`use_safetensors=True`: pickle weights are refused, never unpickled), with no network."""
    config_path, model_type = read_model_type(export_dir)
    family = families.family_for_model_type(model_type, config_path)
    model_class = family.hf_class(family.model_class)
    return model_class.from_pretrained(str(export_dir), use_safetensors=True, local_files_only=True).eval()
