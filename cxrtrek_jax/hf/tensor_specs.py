"""What every Hugging Face family's tensor mapping is made of: one `TensorSpec` per checkpoint tensor
(its name and shape, our parameter path and shape, the layout change between them), the naming
`CheckpointLayout` of a family's checkpoints, and the conversion of a whole parameter tree to
checkpoint tensors and back given a family's list of specs.

Layout changes (`TensorSpec.kind`): "dense": our kernel [*in, *out] <-> the Linear weight
[prod(out), prod(in)] (transposed, head axes flattened); "conv": the patch kernel HWIO <-> OIHW;
"reshape": the same values, maybe flattened; "drop": a checkpoint tensor CXRTrekNet never uses,
checked and discarded on import. Float16/bfloat16 tensors are read as float32 and written in the
requested dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cxrtrek_jax.hf.errors import ExportError, HFCheckpointError
from cxrtrek_jax.model import CXRTrekNet, ModelConfig

__all__ = [
    "CONDITIONAL_GENERATION_LAYOUT",
    "FLOAT_DTYPES",
    "CheckpointLayout",
    "TensorSpec",
    "bias_specs",
    "dense_specs",
    "flatten_tree",
    "norm_specs",
    "state_from_tensors",
    "tensors_from_params",
]

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor: its name and shape, our parameter path and shape, and the layout change.

    kind: "dense" (kernel [*in, *out] <-> weight [out, in]; `n_in` in-axes),
    "conv" (HWIO <-> OIHW), "reshape" (same values, maybe flattened), or
    "drop" (an HF tensor CXRTrekNet never uses, checked and discarded on import;
    `path` and `shape` are None).
    """

    hf_name: str
    hf_shape: tuple[int, ...]
    path: tuple[str | int, ...] | None
    shape: tuple[int, ...] | None
    kind: str
    n_in: int = 1


def dense_specs(hf: str, path: tuple, in_shape: tuple, out_shape: tuple) -> list[TensorSpec]:
    """The weight of Linear `hf` for our kernel at `path` of shape [*in_shape, *out_shape]."""
    return [TensorSpec(f"{hf}.weight", (math.prod(out_shape), math.prod(in_shape)), (*path, "kernel"),
                       (*in_shape, *out_shape), "dense", len(in_shape))]


def bias_specs(hf: str, path: tuple, out_shape: tuple) -> list[TensorSpec]:
    """The bias of Linear `hf` for our bias at `path` of shape `out_shape`."""
    return [TensorSpec(f"{hf}.bias", (math.prod(out_shape),), (*path, "bias"), tuple(out_shape), "reshape")]


def norm_specs(hf: str, path: tuple, dim: int, with_bias: bool) -> list[TensorSpec]:
    """The weight (and bias, for a LayerNorm) of norm `hf` of width `dim` for our scale (and bias) at `path`."""
    specs = [TensorSpec(f"{hf}.weight", (dim,), (*path, "scale"), (dim,), "reshape")]
    if with_bias:
        specs.append(TensorSpec(f"{hf}.bias", (dim,), (*path, "bias"), (dim,), "reshape"))
    return specs


@dataclasses.dataclass(frozen=True)
class CheckpointLayout:
    """How a family's checkpoints name their tensors and its PyTorch model its modules.

    aliases: (prefix, replacement) pairs applied in order to every tensor name read, mapping the
    other spellings a checkpoint may use onto the names of the family's specs.
    module_prefixes: (tensor name prefix, module path prefix) pairs: where a checkpoint tensor's
    module sits in the PyTorch model (PEFT `target_modules`).
    embed_name, head_name: the token embedding and the output head; with tied embeddings a head
    tensor equal to the embedding is accepted and dropped on import.
    """

    aliases: tuple[tuple[str, str], ...]
    module_prefixes: tuple[tuple[str, str], ...]
    embed_name: str
    head_name: str

    def canonical_name(self, name: str) -> str:
        """The spec name of a checkpoint tensor name."""
        for prefix, replacement in self.aliases:
            if name.startswith(prefix):
                name = replacement + name[len(prefix):]
        return name

    def module_name(self, tensor_name: str) -> str:
        """The PyTorch module path of a checkpoint weight name, e.g. (LLaVA)
        "language_model.model.layers.0.self_attn.q_proj.weight" -> "model.language_model.layers.0.self_attn.q_proj"."""
        module = tensor_name.removesuffix(".weight")
        for prefix, replacement in self.module_prefixes:
            if module.startswith(prefix):
                return replacement + module[len(prefix):]
        raise ExportError(f"tensor {tensor_name!r} belongs to no known module of the PyTorch model")


# `save_pretrained` names of `LlavaForConditionalGeneration` and `Gemma3ForConditionalGeneration`
# (`vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.weight`);
# read also: the in-memory names of transformers 5 (`model.vision_tower.*`, `model.language_model.*`,
# `lm_head.weight`) and the transformers 4 SigLIP prefix `vision_tower.vision_model.*`.
CONDITIONAL_GENERATION_LAYOUT = CheckpointLayout(
    aliases=(
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
        ("vision_tower.vision_model.", "vision_tower."),
    ),
    module_prefixes=(
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head", "lm_head"),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ),
    embed_name="language_model.model.embed_tokens.weight",
    head_name="language_model.lm_head.weight",
)


# ---------------------------------------------------------------------------
# Parameters -> tensors
# ---------------------------------------------------------------------------

def _to_hf_layout(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.kind == "dense":
        return value.reshape(math.prod(spec.shape[: spec.n_in]), -1).T
    if spec.kind == "conv":
        return value.transpose(3, 2, 0, 1)
    return value.reshape(spec.hf_shape)


def _from_hf_layout(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.kind == "dense":
        return value.T.reshape(spec.shape)
    if spec.kind == "conv":
        return value.transpose(2, 3, 1, 0)
    return value.reshape(spec.shape)


def _pure_params(params: Any) -> dict:
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        return nnx.to_pure_dict(params)
    return params


def flatten_tree(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    """A nested mapping as {key path tuple: leaf}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def tensors_from_params(params: Any, specs: list[TensorSpec], *, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Checkpoint tensors {spec name: array in HF layout, `dtype`} of our parameters, in spec order.

    params: the model's `nnx.Param` state, its pure dict, or the model; must hold exactly the
    paths of `specs` (LoRA adapters merged first, `merge_lora`). dtype: "float32", "bfloat16" or
    "float16".
    """
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"export dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    flat = flatten_tree(_pure_params(params))
    lora = sorted(_path_str(p) for p in flat if "lora" in p)
    if lora:
        raise HFCheckpointError(f"the parameters hold LoRA adapters ({lora[0]}, ...): merge them into the base "
                                "weights with cxrtrek_jax.model.merge_lora before exporting")
    specs = [spec for spec in specs if spec.kind != "drop"]
    known = {spec.path for spec in specs}
    extra = sorted(_path_str(p) for p in flat if p not in known)
    missing = sorted(_path_str(spec.path) for spec in specs if spec.path not in flat)
    if extra or missing:
        raise HFCheckpointError(f"parameters do not match the config: missing {missing}, unexpected {extra}")
    out_dtype = jnp.dtype(dtype)
    tensors = {}
    for spec in specs:
        value = np.asarray(flat[spec.path], dtype=np.float32)
        if value.shape != spec.shape:
            raise HFCheckpointError(f"parameter {_path_str(spec.path)} has shape {value.shape}, "
                                    f"the config needs {spec.shape}")
        tensors[spec.hf_name] = np.ascontiguousarray(_to_hf_layout(value, spec).astype(out_dtype))
    return tensors


# ---------------------------------------------------------------------------
# Tensors -> parameters
# ---------------------------------------------------------------------------

def _canonical_tensors(tensors: Mapping[str, Any], layout: CheckpointLayout) -> dict[str, Any]:
    canonical: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in tensors.items():
        key = layout.canonical_name(name)
        if key in canonical:
            raise HFCheckpointError(f"tensors {origin[key]!r} and {name!r} both map to {key!r}")
        canonical[key], origin[key] = value, name
    return canonical


def _tensor_problems(tensors: Mapping[str, Any], expected: Mapping[str, TensorSpec]) -> list[str]:
    """"missing: [...]", "unexpected: [...]", "misshapen: [...]", "bad dtype: [...]" (the non-empty ones)."""
    missing = sorted(name for name in expected if name not in tensors)
    unexpected = sorted(name for name in tensors if name not in expected)
    misshapen, bad_dtype = [], []
    for name, value in tensors.items():
        spec = expected.get(name)
        if spec is None:
            continue
        if tuple(value.shape) != spec.hf_shape:
            misshapen.append(f"{name}: {tuple(value.shape)} (expected {spec.hf_shape})")
        if str(value.dtype) not in FLOAT_DTYPES:
            bad_dtype.append(f"{name}: {value.dtype} (expected one of {FLOAT_DTYPES})")
    return [f"{label}: {items}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                     ("misshapen", misshapen), ("bad dtype", bad_dtype))
            if items]


def state_from_tensors(tensors: Mapping[str, Any], specs: list[TensorSpec], cfg: ModelConfig,
                       layout: CheckpointLayout) -> nnx.State:
    """Our parameter state (float32, with axis-name metadata) from checkpoint tensors named by `layout`.

    Every tensor's name, shape and dtype is checked against `specs`; one HFCheckpointError lists
    all missing, unexpected, misshapen and non-float tensors. Tensors of kind "drop" are checked
    and discarded. With tied embeddings a head tensor is accepted only if equal to the embedding
    table. LoRA parameters (if `cfg.lora`) are not part of the result; `nnx.update(model, state)`
    leaves them as initialised.
    """
    tensors = _canonical_tensors(tensors, layout)
    expected = {spec.hf_name: spec for spec in specs}
    if cfg.text.tie_embeddings and layout.head_name in tensors:
        embed = tensors.get(layout.embed_name)
        if embed is not None and np.array_equal(np.asarray(tensors[layout.head_name]), np.asarray(embed)):
            tensors = {k: v for k, v in tensors.items() if k != layout.head_name}
    problems = _tensor_problems(tensors, expected)
    if problems:
        raise HFCheckpointError("HF tensors do not match the config; " + "; ".join(problems))

    base_cfg = dataclasses.replace(cfg, lora=None)
    state = nnx.state(nnx.eval_shape(lambda: CXRTrekNet(base_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    pure: dict = {}
    for spec in specs:
        if spec.kind == "drop":
            continue
        value = _from_hf_layout(np.asarray(tensors[spec.hf_name]).astype(np.float32), spec)
        node = pure
        for key in spec.path[:-1]:
            node = node.setdefault(key, {})
        node[spec.path[-1]] = jnp.asarray(value)
    nnx.replace_by_pure_dict(state, pure)
    return state
