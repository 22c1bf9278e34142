"""Hugging Face interop: CXRTrekNet <-> `transformers.LlavaForConditionalGeneration`
(SigLIP vision tower, Llama text model), configs, tensors and safetensors files.

Config mapping (`to_hf_config` / `from_hf_config`):
  * vision -> `SiglipVisionConfig` with `vision_use_head=False` (LLaVA never
    uses SigLIP's attention-pooling head, so no unused tensors are written);
  * LLaVA takes `vision_tower(...).hidden_states[vision_feature_layer]`, with
    `vision_feature_select_strategy="full"` (SigLIP has no class token to
    drop). SigLIP's `post_layernorm` is applied to that state only when the
    vision config sets `tie_last_hidden_states=True` and the feature layer is
    the last one; that is our `VisionConfig.feature_final_norm`;
  * text -> `LlamaConfig` (silu, no biases, default RoPE in the rotate-half
    layout, which is also ours: no q/k permutation is needed);
  * the image processor is not part of this config: it must feed the
    grayscale image replicated to 3 channels, rescaled to [0, 1] and
    normalised with `VisionConfig.pixel_mean` / `pixel_std`.

Tensor names are those `save_pretrained` writes for LLaVA
(`vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`,
`language_model.lm_head.weight`, the last absent with tied embeddings).
Import also accepts the in-memory names of transformers 5
(`model.vision_tower.*`, `model.language_model.*`, `lm_head.weight`) and the
transformers 4 SigLIP prefix `vision_tower.vision_model.*`.

Layout conversions: dense kernels [*in, *out] <-> weights [out, in]
(transposed, heads flattened); the patch kernel HWIO <-> OIHW; per-layer
names <-> our per-layer modules; float16/bfloat16 tensors are read as
float32 and written in the requested dtype. Pickle checkpoints (`.bin`,
`.pt`, ...) are refused: this module never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from cxrtrek_jax.model import (
    ACTIVATIONS,
    CXRTrekNet,
    ModelConfig,
    ProjectorConfig,
    TextConfig,
    VisionConfig,
)

__all__ = [
    "HFConfigError",
    "flatten_tree",
    "HFCheckpointError",
    "to_hf_config",
    "from_hf_config",
    "hf_tensor_specs",
    "to_hf_tensors",
    "from_hf_tensors",
    "write_safetensors_dir",
    "read_safetensors_dir",
    "save_hf_checkpoint",
    "load_hf_checkpoint",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX_FILE",
    "DEFAULT_MAX_SHARD_BYTES",
]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


class HFConfigError(ValueError):
    """A Hugging Face config that CXRTrekNet cannot represent."""


class HFCheckpointError(ValueError):
    """A tensor set or checkpoint directory that does not fit the config."""


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

def to_hf_config(cfg: ModelConfig, *, bos_token_id: int | None = 1, eos_token_id: int | None = 2,
                 pad_token_id: int | None = None):
    """The `transformers.LlavaConfig` of `cfg` (token ids of BOS/EOS/PAD go to the text config)."""
    from transformers import LlamaConfig, LlavaConfig, SiglipVisionConfig

    vision, text = cfg.vision, cfg.text
    if text.embed_dim % text.num_heads:
        raise HFConfigError(f"text.embed_dim ({text.embed_dim}) must be a multiple of text.num_heads "
                            f"({text.num_heads}) for transformers' LlamaConfig")
    vision_config = SiglipVisionConfig(
        hidden_size=vision.width, intermediate_size=vision.mlp_dim, num_hidden_layers=vision.depth,
        num_attention_heads=vision.num_heads, num_channels=vision.num_channels, image_size=vision.image_size,
        patch_size=vision.patch_size, hidden_act=vision.activation, layer_norm_eps=vision.layer_norm_eps,
        vision_use_head=False, tie_last_hidden_states=vision.feature_final_norm)
    text_config = LlamaConfig(
        vocab_size=text.vocab_size, hidden_size=text.embed_dim, intermediate_size=text.mlp_dim,
        num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads, head_dim=text.head_dim, hidden_act="silu",
        max_position_embeddings=text.max_positions, rms_norm_eps=text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(text.rope_theta)},
        tie_word_embeddings=text.tie_embeddings, attention_bias=False, mlp_bias=False,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=cfg.image_token_id,
        image_seq_length=vision.tokens_per_image, projector_hidden_act=cfg.projector.activation,
        vision_feature_select_strategy="full", vision_feature_layer=vision.feature_layer,
        multimodal_projector_bias=cfg.projector.use_bias, tie_word_embeddings=text.tie_embeddings)


def _field(config: Any, name: str, where: str) -> Any:
    if isinstance(config, Mapping):
        if name not in config:
            raise HFConfigError(f"{where}.{name} is missing")
        return config[name]
    if not hasattr(config, name):
        raise HFConfigError(f"{where}.{name} is missing")
    return getattr(config, name)


def _refuse(condition: bool, field: str, value: Any, why: str) -> None:
    if condition:
        raise HFConfigError(f"cannot represent {field}={value!r}: {why}")


def _square_size(value: Any, field: str) -> int:
    if isinstance(value, (list, tuple)):
        _refuse(len(set(value)) != 1, field, value, "only square sizes are supported")
        value = value[0]
    return int(value)


def from_hf_config(hf_config: Any, *, max_images: int = 1, dtype: str = "float32") -> ModelConfig:
    """Our `ModelConfig` for a `transformers.LlavaConfig` (or its config.json dict).

    Refuses, naming the field, whatever the model cannot represent. HF
    configs carry no `max_images` (a data-side limit) nor compute dtype;
    pass them here or override later.
    """
    if isinstance(hf_config, Mapping):
        from transformers import LlavaConfig

        hf_config = LlavaConfig.from_dict(dict(hf_config))
    model_type = getattr(hf_config, "model_type", None)
    _refuse(model_type != "llava", "model_type", model_type, "only LLaVA configs are supported")
    vc, tc = hf_config.vision_config, hf_config.text_config
    _refuse(vc.model_type != "siglip_vision_model", "vision_config.model_type", vc.model_type,
            "the vision tower must be SigLIP")
    _refuse(tc.model_type != "llama", "text_config.model_type", tc.model_type, "the text model must be Llama")
    strategy = hf_config.vision_feature_select_strategy
    _refuse(strategy != "full", "vision_feature_select_strategy", strategy,
            "SigLIP has no class token; only 'full' keeps every patch feature")
    layer = hf_config.vision_feature_layer
    _refuse(not isinstance(layer, int), "vision_feature_layer", layer, "only a single feature layer is supported")
    _refuse(vc.hidden_act not in ACTIVATIONS, "vision_config.hidden_act", vc.hidden_act,
            f"supported: {ACTIVATIONS}")
    _refuse(hf_config.projector_hidden_act not in ACTIVATIONS, "projector_hidden_act",
            hf_config.projector_hidden_act, f"supported: {ACTIVATIONS}")
    _refuse(tc.hidden_act != "silu", "text_config.hidden_act", tc.hidden_act, "the decoder MLP is SwiGLU (silu)")
    _refuse(bool(tc.attention_bias), "text_config.attention_bias", tc.attention_bias, "no attention biases")
    _refuse(bool(tc.mlp_bias), "text_config.mlp_bias", tc.mlp_bias, "no MLP biases")
    _refuse(tc.pretraining_tp not in (None, 1), "text_config.pretraining_tp", tc.pretraining_tp, "must be 1")
    rope = dict(tc.rope_parameters or {})
    _refuse(rope.get("rope_type", "default") != "default", "text_config.rope_parameters.rope_type",
            rope.get("rope_type"), "only the default RoPE is supported")
    depth = int(vc.num_hidden_layers)
    _refuse(not -(depth + 1) <= layer <= depth, "vision_feature_layer", layer,
            f"out of range for {depth} vision layers")
    last_layer = layer % (depth + 1) == depth
    vision = VisionConfig(
        image_size=_square_size(vc.image_size, "vision_config.image_size"),
        patch_size=_square_size(vc.patch_size, "vision_config.patch_size"),
        width=vc.hidden_size, depth=depth, num_heads=vc.num_attention_heads, mlp_dim=vc.intermediate_size,
        num_channels=vc.num_channels, activation=vc.hidden_act, layer_norm_eps=float(vc.layer_norm_eps),
        feature_layer=layer,
        feature_final_norm=bool(getattr(vc, "tie_last_hidden_states", False)) and last_layer)
    _refuse(hf_config.image_seq_length != vision.tokens_per_image, "image_seq_length",
            hf_config.image_seq_length, f"the vision tower gives {vision.tokens_per_image} tokens per image")
    text = TextConfig(
        vocab_size=tc.vocab_size, embed_dim=tc.hidden_size, num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads, num_kv_heads=tc.num_key_value_heads or tc.num_attention_heads,
        head_dim=tc.head_dim or tc.hidden_size // tc.num_attention_heads,
        mlp_dim=tc.intermediate_size, rope_theta=float(rope.get("rope_theta", 10_000.0)),
        rms_norm_eps=float(tc.rms_norm_eps), tie_embeddings=bool(hf_config.tie_word_embeddings),
        max_positions=tc.max_position_embeddings)
    return ModelConfig(
        vision=vision, text=text, image_token_id=hf_config.image_token_id, max_images=max_images,
        projector=ProjectorConfig(activation=hf_config.projector_hidden_act,
                                  use_bias=bool(hf_config.multimodal_projector_bias)),
        dtype=dtype)


# ---------------------------------------------------------------------------
# Tensor name and layout table
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor: its name and shape, our parameter path and shape, and the layout change.

    kind: "dense" (kernel [*in, *out] <-> weight [out, in]; `n_in` in-axes),
    "conv" (HWIO <-> OIHW), "reshape" (same values, maybe flattened), or
    "drop" (an HF tensor LLaVA never uses, checked and discarded on import).
    """

    hf_name: str
    hf_shape: tuple[int, ...]
    path: tuple[str | int, ...] | None
    shape: tuple[int, ...] | None
    kind: str
    n_in: int = 1


def _dense(hf: str, path: tuple, in_shape: tuple, out_shape: tuple) -> list[TensorSpec]:
    return [TensorSpec(f"{hf}.weight", (math.prod(out_shape), math.prod(in_shape)), (*path, "kernel"),
                       (*in_shape, *out_shape), "dense", len(in_shape))]


def _bias(hf: str, path: tuple, out_shape: tuple) -> list[TensorSpec]:
    return [TensorSpec(f"{hf}.bias", (math.prod(out_shape),), (*path, "bias"), tuple(out_shape), "reshape")]


def _norm(hf: str, path: tuple, dim: int, with_bias: bool) -> list[TensorSpec]:
    specs = [TensorSpec(f"{hf}.weight", (dim,), (*path, "scale"), (dim,), "reshape")]
    if with_bias:
        specs.append(TensorSpec(f"{hf}.bias", (dim,), (*path, "bias"), (dim,), "reshape"))
    return specs


def _vision_specs(v: VisionConfig) -> list[TensorSpec]:
    e, h, d, m, p = v.width, v.num_heads, v.head_dim, v.mlp_dim, v.patch_size
    specs = [
        TensorSpec("vision_tower.embeddings.patch_embedding.weight", (e, v.num_channels, p, p),
                   ("vision", "patch_embed", "kernel"), (p, p, v.num_channels, e), "conv"),
        TensorSpec("vision_tower.embeddings.patch_embedding.bias", (e,), ("vision", "patch_embed", "bias"),
                   (e,), "reshape"),
        TensorSpec("vision_tower.embeddings.position_embedding.weight", (v.tokens_per_image, e),
                   ("vision", "pos_embed"), (v.tokens_per_image, e), "reshape"),
    ]
    for i in range(v.depth):
        hf, ours = f"vision_tower.encoder.layers.{i}", ("vision", "layers", i)
        specs += _norm(f"{hf}.layer_norm1", (*ours, "norm1"), e, True)
        for proj in ("q_proj", "k_proj", "v_proj"):
            specs += _dense(f"{hf}.self_attn.{proj}", (*ours, "attn", proj), (e,), (h, d))
            specs += _bias(f"{hf}.self_attn.{proj}", (*ours, "attn", proj), (h, d))
        specs += _dense(f"{hf}.self_attn.out_proj", (*ours, "attn", "out_proj"), (h, d), (e,))
        specs += _bias(f"{hf}.self_attn.out_proj", (*ours, "attn", "out_proj"), (e,))
        specs += _norm(f"{hf}.layer_norm2", (*ours, "norm2"), e, True)
        specs += _dense(f"{hf}.mlp.fc1", (*ours, "mlp", "fc1"), (e,), (m,))
        specs += _bias(f"{hf}.mlp.fc1", (*ours, "mlp", "fc1"), (m,))
        specs += _dense(f"{hf}.mlp.fc2", (*ours, "mlp", "fc2"), (m,), (e,))
        specs += _bias(f"{hf}.mlp.fc2", (*ours, "mlp", "fc2"), (e,))
    specs += _norm("vision_tower.post_layernorm", ("vision", "final_norm"), e, True)
    return specs


def _vision_head_specs(v: VisionConfig) -> list[TensorSpec]:
    """SigLIP's attention-pooling head (`vision_use_head=True`): unused by LLaVA, dropped on import."""
    e, m = v.width, v.mlp_dim
    shapes = {
        "probe": (1, 1, e), "attention.in_proj_weight": (3 * e, e), "attention.in_proj_bias": (3 * e,),
        "attention.out_proj.weight": (e, e), "attention.out_proj.bias": (e,), "layernorm.weight": (e,),
        "layernorm.bias": (e,), "mlp.fc1.weight": (m, e), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (e, m),
        "mlp.fc2.bias": (e,),
    }
    return [TensorSpec(f"vision_tower.head.{name}", shape, None, None, "drop") for name, shape in shapes.items()]


def _projector_specs(cfg: ModelConfig) -> list[TensorSpec]:
    ev, et = cfg.vision.width, cfg.text.embed_dim
    specs = []
    for name, in_dim in (("linear_1", ev), ("linear_2", et)):
        specs += _dense(f"multi_modal_projector.{name}", ("projector", name), (in_dim,), (et,))
        if cfg.projector.use_bias:
            specs += _bias(f"multi_modal_projector.{name}", ("projector", name), (et,))
    return specs


def _text_specs(t: TextConfig) -> list[TensorSpec]:
    e, h, k, d, m, vocab = t.embed_dim, t.num_heads, t.num_kv_heads, t.head_dim, t.mlp_dim, t.vocab_size
    specs = [TensorSpec("language_model.model.embed_tokens.weight", (vocab, e), ("text", "embed", "embedding"),
                        (vocab, e), "reshape")]
    for i in range(t.num_layers):
        hf, ours = f"language_model.model.layers.{i}", ("text", "layers", i)
        specs += _norm(f"{hf}.input_layernorm", (*ours, "input_norm"), e, False)
        specs += _dense(f"{hf}.self_attn.q_proj", (*ours, "attn", "q_proj"), (e,), (h, d))
        specs += _dense(f"{hf}.self_attn.k_proj", (*ours, "attn", "k_proj"), (e,), (k, d))
        specs += _dense(f"{hf}.self_attn.v_proj", (*ours, "attn", "v_proj"), (e,), (k, d))
        specs += _dense(f"{hf}.self_attn.o_proj", (*ours, "attn", "o_proj"), (h, d), (e,))
        specs += _norm(f"{hf}.post_attention_layernorm", (*ours, "post_attn_norm"), e, False)
        for proj, in_dim, out_dim in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
            specs += _dense(f"{hf}.mlp.{proj}", (*ours, "mlp", proj), (in_dim,), (out_dim,))
    specs += _norm("language_model.model.norm", ("text", "final_norm"), e, False)
    if not t.tie_embeddings:
        specs += _dense("language_model.lm_head", ("text", "lm_head"), (e,), (vocab,))
    return specs


def hf_tensor_specs(cfg: ModelConfig, *, vision_head: bool = False) -> list[TensorSpec]:
    """Every HF tensor of the LLaVA checkpoint for `cfg` (of the Gemma 3 checkpoint for a
    Gemma 3 family config, `hf.gemma3`), in checkpoint order."""
    from cxrtrek_jax.hf import gemma3

    if gemma3.is_gemma3(cfg):
        return gemma3.hf_tensor_specs(cfg, vision_head=vision_head)
    specs = _vision_specs(cfg.vision) + _projector_specs(cfg) + _text_specs(cfg.text)
    return specs + (_vision_head_specs(cfg.vision) if vision_head else [])


_NAME_ALIASES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
)


def _canonical_name(name: str) -> str:
    for prefix, replacement in _NAME_ALIASES:
        if name.startswith(prefix):
            name = replacement + name[len(prefix):]
    return name


# ---------------------------------------------------------------------------
# Tensors
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


def to_hf_tensors(params: Any, cfg: ModelConfig, *, dtype: str = "float32") -> dict[str, np.ndarray]:
    """HF LLaVA tensors (checkpoint names) from our parameters.

    params: the model's `nnx.Param` state, its pure dict, or the model.
    LoRA adapters must be merged first (`merge_lora`). dtype: "float32",
    "bfloat16" or "float16".
    """
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"export dtype must be one of {_FLOAT_DTYPES}, got {dtype!r}")
    flat = {tuple(p for p in path): value for path, value in flatten_tree(_pure_params(params)).items()}
    lora = sorted(_path_str(p) for p in flat if "lora" in p)
    if lora:
        raise HFCheckpointError(f"the parameters hold LoRA adapters ({lora[0]}, ...): merge them into the base "
                                "weights with cxrtrek_jax.model.merge_lora before exporting")
    specs = hf_tensor_specs(cfg)
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


def _canonical_tensors(tensors: Mapping[str, Any]) -> dict[str, Any]:
    canonical: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in tensors.items():
        key = _canonical_name(name)
        if key in canonical:
            raise HFCheckpointError(f"tensors {origin[key]!r} and {name!r} both map to {key!r}")
        canonical[key], origin[key] = value, name
    return canonical


def from_hf_tensors(tensors: Mapping[str, Any], cfg: ModelConfig, *, vision_head: bool = False) -> nnx.State:
    """Our parameter state (float32, with axis-name metadata) from HF LLaVA tensors.

    Every tensor's name, shape and dtype is checked against `cfg`; one
    HFCheckpointError lists all missing, unexpected, misshapen and
    non-float tensors. `vision_head=True` accepts (and drops) the SigLIP
    pooling-head tensors of a `vision_use_head=True` checkpoint. With tied
    embeddings an `lm_head` tensor is accepted only if equal to the
    embedding table. LoRA parameters (if `cfg.lora`) are not part of the
    result; `nnx.update(model, state)` leaves them as initialised.
    """
    tensors = _canonical_tensors(tensors)
    specs = hf_tensor_specs(cfg, vision_head=vision_head)
    expected = {spec.hf_name: spec for spec in specs}
    tied_head = "language_model.lm_head.weight"
    if cfg.text.tie_embeddings and tied_head in tensors:
        embed = tensors.get("language_model.model.embed_tokens.weight")
        if embed is not None and np.array_equal(np.asarray(tensors[tied_head]), np.asarray(embed)):
            tensors = {k: v for k, v in tensors.items() if k != tied_head}
    missing = sorted(name for name in expected if name not in tensors)
    unexpected = sorted(name for name in tensors if name not in expected)
    misshapen, bad_dtype = [], []
    for name, value in tensors.items():
        spec = expected.get(name)
        if spec is None:
            continue
        if tuple(value.shape) != spec.hf_shape:
            misshapen.append(f"{name}: {tuple(value.shape)} (expected {spec.hf_shape})")
        if str(value.dtype) not in _FLOAT_DTYPES:
            bad_dtype.append(f"{name}: {value.dtype} (expected one of {_FLOAT_DTYPES})")
    problems = [f"{label}: {items}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                           ("misshapen", misshapen), ("bad dtype", bad_dtype))
                if items]
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


# ---------------------------------------------------------------------------
# safetensors files
# ---------------------------------------------------------------------------

def _refuse_pickles(directory: str, names: Iterable[str]) -> None:
    pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise HFCheckpointError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickles)}), which are never loaded here "
            "(unpickling can run arbitrary code). Convert them to safetensors first, e.g. in PyTorch: "
            "LlavaForConditionalGeneration.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)")


def write_safetensors_dir(tensors: Mapping[str, np.ndarray], directory: str, *,
                          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write `tensors` as model.safetensors, or as shards plus model.safetensors.index.json
    when they exceed `max_shard_bytes`. Returns the file names written."""
    os.makedirs(directory, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name, value in tensors.items():
        if shards[-1] and shard_bytes + value.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = value
        shard_bytes += value.nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SAFETENSORS_FILE), metadata=metadata)
        return [SAFETENSORS_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(files, shards):
        save_file(shard, os.path.join(directory, file), metadata=metadata)
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, SAFETENSORS_INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    return [*files, SAFETENSORS_INDEX_FILE]


def _read_file(path: str) -> dict[str, np.ndarray]:
    with safe_open(path, framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def read_safetensors_dir(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (single file or sharded with an index).

    Refuses pickle checkpoints with a message saying to convert them.
    """
    if os.path.isfile(directory):
        if directory.endswith(_PICKLE_SUFFIXES):
            _refuse_pickles(os.path.dirname(directory) or ".", [os.path.basename(directory)])
        raise HFCheckpointError(f"{directory} is a file; pass the checkpoint directory")
    if not os.path.isdir(directory):
        raise HFCheckpointError(f"checkpoint directory {directory} does not exist")
    index_path = os.path.join(directory, SAFETENSORS_INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFCheckpointError(f"{index_path} has no 'weight_map' object")
        tensors: dict[str, np.ndarray] = {}
        for file in sorted(set(weight_map.values())):
            path = os.path.join(directory, file)
            if not os.path.exists(path):
                raise HFCheckpointError(f"{index_path} names shard {file}, which does not exist")
            shard = _read_file(path)
            listed = {name for name, f in weight_map.items() if f == file}
            if set(shard) != listed:
                raise HFCheckpointError(
                    f"shard {file} does not match {SAFETENSORS_INDEX_FILE}: not in shard "
                    f"{sorted(listed - set(shard))}, not in index {sorted(set(shard) - listed)}")
            tensors.update(shard)
        return tensors
    single = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.exists(single):
        return _read_file(single)
    names = os.listdir(directory)
    _refuse_pickles(directory, names)
    raise HFCheckpointError(f"{directory} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX_FILE}")


def save_hf_checkpoint(params: Any, cfg: ModelConfig, directory: str, *, dtype: str = "float32",
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, **token_ids: int | None) -> list[str]:
    """Write config.json and the safetensors of a `transformers` LLaVA checkpoint.

    `token_ids` (bos_token_id, eos_token_id, pad_token_id) go to `to_hf_config`.
    Returns the file names written.
    """
    hf_config = to_hf_config(cfg, **token_ids)
    hf_config.dtype = dtype
    os.makedirs(directory, exist_ok=True)
    hf_config.to_json_file(os.path.join(directory, "config.json"))
    return ["config.json", *write_safetensors_dir(to_hf_tensors(params, cfg, dtype=dtype), directory,
                                                  max_shard_bytes=max_shard_bytes)]


def load_hf_checkpoint(directory: str, *, max_images: int = 1, dtype: str = "float32",
                       ) -> tuple[ModelConfig, nnx.State]:
    """(ModelConfig, parameter state) of a local `transformers` checkpoint directory: LLaVA, or
    Gemma 3 / MedGemma (`model_type` "gemma3", read by `hf.gemma3`)."""
    from transformers import LlavaConfig

    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise HFCheckpointError(f"{directory} has no config.json")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "gemma3":
        from cxrtrek_jax.hf import gemma3

        return gemma3.load_hf_checkpoint(directory, max_images=max_images, dtype=dtype)
    if model_type != "llava":
        raise HFConfigError(f"{config_path}: model_type {model_type!r} is not supported; supported: 'llava' "
                            "(LlavaForConditionalGeneration: SigLIP + Llama) and 'gemma3' "
                            "(Gemma3ForConditionalGeneration: Gemma 3, MedGemma)")
    hf_config = LlavaConfig.from_json_file(config_path)
    cfg = from_hf_config(hf_config, max_images=max_images, dtype=dtype)
    tensors = read_safetensors_dir(directory)
    return cfg, from_hf_tensors(tensors, cfg, vision_head=bool(hf_config.vision_config.vision_use_head))
