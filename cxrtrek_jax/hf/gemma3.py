"""Hugging Face interop for the Gemma 3 family: CXRTrekNet <-> `transformers.Gemma3ForConditionalGeneration`
(SigLIP vision tower, Gemma 3 projector, Gemma 3 text model; MedGemma has this architecture).

Config mapping (`to_hf_config` / `from_hf_config`):
  * vision -> `SiglipVisionConfig` (`vision_use_head=False`); Gemma 3 takes the tower's
    `last_hidden_state`, i.e. the last block with SigLIP's post-layernorm
    (`feature_layer=-1`, `feature_final_norm=True`);
  * projector -> `mm_tokens_per_image` (our `ProjectorConfig.tokens_per_image`), the
    projector norm's eps is the vision config's `layer_norm_eps`;
  * text -> `Gemma3TextConfig`: `layer_types` "sliding_attention" / "full_attention" <->
    "sliding" / "full", `rope_parameters` per layer type (default RoPE, or linear scaling
    on the full layers: MedGemma / Gemma 3 4B use factor 8), `query_pre_attn_scalar`,
    `sliding_window`, `hidden_activation`. Hugging Face applies the bidirectional attention
    over image tokens when given `token_type_ids` (its processor always gives them), which
    is our `bidirectional_image_attention=True`;
  * refused, naming the field: attention or final logit soft-capping, bidirectional text
    attention, attention biases, other RoPE types.

Tensor names are those `save_pretrained` writes (`vision_tower.*`,
`multi_modal_projector.mm_input_projection_weight` [vision width, text width] (not
transposed: a plain matrix, not a Linear), `multi_modal_projector.mm_soft_emb_norm.weight`,
`language_model.model.*`, no `lm_head` with tied embeddings); the in-memory names of
transformers 5 and the `vision_tower.vision_model.*` prefix of the hub checkpoints are
accepted too (`llava._canonical_name`). The Gemma norms' weights are stored as they are
(the +1 is in the computation), so the mapping is exact both ways.
"""

from __future__ import annotations

import os
from typing import Any

from cxrtrek_jax.hf.llava import (
    HFCheckpointError,
    HFConfigError,
    TensorSpec,
    _dense,
    _norm,
    _refuse,
    _square_size,
    _vision_head_specs,
    _vision_specs,
    from_hf_tensors,
    read_safetensors_dir,
    to_hf_tensors,
    write_safetensors_dir,
    DEFAULT_MAX_SHARD_BYTES,
)
from cxrtrek_jax.model import ACTIVATIONS, ModelConfig, ProjectorConfig, TextConfig, VisionConfig

__all__ = ["is_gemma3", "to_hf_config", "from_hf_config", "hf_tensor_specs", "save_hf_checkpoint",
           "load_hf_checkpoint", "MODEL_TYPE"]

MODEL_TYPE = "gemma3"
_LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}


def is_gemma3(cfg: ModelConfig) -> bool:
    """Whether `cfg` is of the Gemma 3 family (exported as Gemma3ForConditionalGeneration)."""
    return cfg.text.family == "gemma3" or cfg.projector.kind == "gemma3"


def _check_exportable(cfg: ModelConfig) -> None:
    if cfg.text.family != "gemma3" or cfg.projector.kind != "gemma3":
        raise HFConfigError(f"a Hugging Face Gemma 3 checkpoint needs text.family 'gemma3' and projector.kind "
                            f"'gemma3', got {cfg.text.family!r} and {cfg.projector.kind!r}")
    if not cfg.text.bidirectional_image_attention:
        raise HFConfigError("text.bidirectional_image_attention=False has no Gemma3ForConditionalGeneration "
                            "equivalent (it always attends both ways within an image given token_type_ids)")
    if not cfg.vision.feature_final_norm or cfg.vision.feature_layer_index != cfg.vision.depth:
        raise HFConfigError("Gemma 3 takes the vision tower's last hidden state with its post-layernorm: "
                            "vision.feature_layer must be the last block and vision.feature_final_norm True")


def to_hf_config(cfg: ModelConfig, *, bos_token_id: int | None = 2, eos_token_id: int | list[int] | None = 1,
                 pad_token_id: int | None = 0, boi_token_id: int | None = None, eoi_token_id: int | None = None):
    """The `transformers.Gemma3Config` of `cfg`; boi/eoi (start/end of image) ids default to the image id."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    _check_exportable(cfg)
    vision, text = cfg.vision, cfg.text
    if abs(vision.layer_norm_eps - cfg.projector.norm_eps) > 0:
        raise HFConfigError(f"Gemma 3 uses the vision layer_norm_eps ({vision.layer_norm_eps}) for its projector "
                            f"norm; projector.norm_eps is {cfg.projector.norm_eps}")
    vision_config = SiglipVisionConfig(
        hidden_size=vision.width, intermediate_size=vision.mlp_dim, num_hidden_layers=vision.depth,
        num_attention_heads=vision.num_heads, num_channels=vision.num_channels, image_size=vision.image_size,
        patch_size=vision.patch_size, hidden_act=vision.activation, layer_norm_eps=vision.layer_norm_eps,
        vision_use_head=False)
    full = {"rope_type": "default", "rope_theta": float(text.rope_theta)}
    if text.rope_scaling_factor != 1.0:
        full = {"rope_type": "linear", "rope_theta": float(text.rope_theta), "factor": float(text.rope_scaling_factor)}
    sliding = {"rope_type": "default", "rope_theta": float(text.local_rope_theta or text.rope_theta)}
    layer_types = [{"sliding": "sliding_attention", "full": "full_attention"}[t]
                   for t in (text.layer_types or ("full",) * text.num_layers)]
    text_config = Gemma3TextConfig(
        vocab_size=text.vocab_size, hidden_size=text.embed_dim, intermediate_size=text.mlp_dim,
        num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads, head_dim=text.head_dim, hidden_activation=text.mlp_activation,
        max_position_embeddings=text.max_positions, rms_norm_eps=text.rms_norm_eps,
        query_pre_attn_scalar=text.query_pre_attn_scalar or text.head_dim,
        sliding_window=text.sliding_window or text.max_positions, layer_types=layer_types,
        rope_parameters={"full_attention": full, "sliding_attention": sliding},
        tie_word_embeddings=text.tie_embeddings, attention_bias=False, final_logit_softcapping=None,
        attn_logit_softcapping=None, use_bidirectional_attention=False,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    image = cfg.image_token_id
    return Gemma3Config(
        vision_config=vision_config, text_config=text_config, mm_tokens_per_image=cfg.tokens_per_image,
        image_token_index=image, boi_token_index=image if boi_token_id is None else boi_token_id,
        eoi_token_index=image if eoi_token_id is None else eoi_token_id,
        tie_word_embeddings=text.tie_embeddings)


def from_hf_config(hf_config: Any, *, max_images: int = 1, dtype: str = "float32") -> ModelConfig:
    """Our `ModelConfig` for a `transformers.Gemma3Config` (or its config.json dict); refuses,
    naming the field, what CXRTrekNet cannot represent."""
    from transformers import Gemma3Config

    if isinstance(hf_config, dict):
        hf_config = Gemma3Config.from_dict(dict(hf_config))
    model_type = getattr(hf_config, "model_type", None)
    _refuse(model_type != MODEL_TYPE, "model_type", model_type, "expected a Gemma 3 config")
    vc, tc = hf_config.vision_config, hf_config.text_config
    _refuse(vc.model_type != "siglip_vision_model", "vision_config.model_type", vc.model_type,
            "the vision tower must be SigLIP")
    _refuse(tc.model_type != "gemma3_text", "text_config.model_type", tc.model_type,
            "the text model must be Gemma 3")
    _refuse(vc.hidden_act not in ACTIVATIONS, "vision_config.hidden_act", vc.hidden_act, f"supported: {ACTIVATIONS}")
    _refuse(tc.hidden_activation not in ("gelu_pytorch_tanh", "silu"), "text_config.hidden_activation",
            tc.hidden_activation, "supported: gelu_pytorch_tanh, silu")
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        _refuse(getattr(tc, name, None) is not None, f"text_config.{name}", getattr(tc, name, None),
                "logit soft-capping is not implemented (Gemma 3 does not use it)")
    _refuse(bool(getattr(tc, "use_bidirectional_attention", False)), "text_config.use_bidirectional_attention",
            True, "only causal text attention (EmbeddingGemma-style bidirectional text is not supported)")
    _refuse(bool(tc.attention_bias), "text_config.attention_bias", tc.attention_bias, "no attention biases")
    unknown = sorted(set(tc.layer_types) - set(_LAYER_TYPES))
    _refuse(bool(unknown), "text_config.layer_types", unknown, f"supported: {sorted(_LAYER_TYPES)}")
    rope = dict(tc.rope_parameters or {})
    full, sliding = dict(rope.get("full_attention") or {}), dict(rope.get("sliding_attention") or {})
    _refuse(full.get("rope_type", "default") not in ("default", "linear"),
            "text_config.rope_parameters.full_attention.rope_type", full.get("rope_type"),
            "supported: default, linear")
    _refuse(sliding.get("rope_type", "default") != "default",
            "text_config.rope_parameters.sliding_attention.rope_type", sliding.get("rope_type"),
            "supported: default")
    factor = float(full.get("factor", 1.0)) if full.get("rope_type") == "linear" else 1.0
    vision = VisionConfig(
        image_size=_square_size(vc.image_size, "vision_config.image_size"),
        patch_size=_square_size(vc.patch_size, "vision_config.patch_size"),
        width=vc.hidden_size, depth=vc.num_hidden_layers, num_heads=vc.num_attention_heads,
        mlp_dim=vc.intermediate_size, num_channels=vc.num_channels, activation=vc.hidden_act,
        layer_norm_eps=float(vc.layer_norm_eps), feature_layer=-1, feature_final_norm=True)
    layer_types = tuple(_LAYER_TYPES[t] for t in tc.layer_types)
    text = TextConfig(
        vocab_size=tc.vocab_size, embed_dim=tc.hidden_size, num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads, num_kv_heads=tc.num_key_value_heads or tc.num_attention_heads,
        head_dim=tc.head_dim or tc.hidden_size // tc.num_attention_heads, mlp_dim=tc.intermediate_size,
        rope_theta=float(full.get("rope_theta", 1_000_000.0)), rms_norm_eps=float(tc.rms_norm_eps),
        tie_embeddings=bool(hf_config.tie_word_embeddings), max_positions=tc.max_position_embeddings,
        family="gemma3", mlp_activation=tc.hidden_activation, query_pre_attn_scalar=int(tc.query_pre_attn_scalar),
        layer_types=layer_types, sliding_window=int(tc.sliding_window) if "sliding" in layer_types else None,
        local_rope_theta=float(sliding.get("rope_theta", 10_000.0)), rope_scaling_factor=factor,
        bidirectional_image_attention=True)
    projector = ProjectorConfig(kind="gemma3", tokens_per_image=int(hf_config.mm_tokens_per_image),
                                norm_eps=float(vc.layer_norm_eps))
    try:
        return ModelConfig(vision=vision, text=text, image_token_id=hf_config.image_token_id, max_images=max_images,
                           projector=projector, dtype=dtype)
    except ValueError as err:
        raise HFConfigError(f"cannot represent this Gemma 3 config: {err}") from None


def hf_tensor_specs(cfg: ModelConfig, *, vision_head: bool = False) -> list[TensorSpec]:
    """Every HF tensor of the Gemma 3 checkpoint for `cfg`, in checkpoint order."""
    v, t = cfg.vision, cfg.text
    e, h, k, d, m, vocab = t.embed_dim, t.num_heads, t.num_kv_heads, t.head_dim, t.mlp_dim, t.vocab_size
    specs = _vision_specs(v)
    specs += [
        TensorSpec("multi_modal_projector.mm_input_projection_weight", (v.width, e), ("projector", "linear", "kernel"),
                   (v.width, e), "reshape"),
        TensorSpec("multi_modal_projector.mm_soft_emb_norm.weight", (v.width,), ("projector", "norm", "scale"),
                   (v.width,), "reshape"),
        TensorSpec("language_model.model.embed_tokens.weight", (vocab, e), ("text", "embed", "embedding"),
                   (vocab, e), "reshape"),
    ]
    for i in range(t.num_layers):
        hf, ours = f"language_model.model.layers.{i}", ("text", "layers", i)
        specs += _norm(f"{hf}.input_layernorm", (*ours, "input_norm"), e, False)
        specs += _dense(f"{hf}.self_attn.q_proj", (*ours, "attn", "q_proj"), (e,), (h, d))
        specs += _dense(f"{hf}.self_attn.k_proj", (*ours, "attn", "k_proj"), (e,), (k, d))
        specs += _dense(f"{hf}.self_attn.v_proj", (*ours, "attn", "v_proj"), (e,), (k, d))
        specs += _dense(f"{hf}.self_attn.o_proj", (*ours, "attn", "o_proj"), (h, d), (e,))
        specs += _norm(f"{hf}.self_attn.q_norm", (*ours, "attn", "q_norm"), d, False)
        specs += _norm(f"{hf}.self_attn.k_norm", (*ours, "attn", "k_norm"), d, False)
        specs += _norm(f"{hf}.post_attention_layernorm", (*ours, "post_attn_norm"), e, False)
        specs += _norm(f"{hf}.pre_feedforward_layernorm", (*ours, "pre_mlp_norm"), e, False)
        for proj, in_dim, out_dim in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
            specs += _dense(f"{hf}.mlp.{proj}", (*ours, "mlp", proj), (in_dim,), (out_dim,))
        specs += _norm(f"{hf}.post_feedforward_layernorm", (*ours, "post_mlp_norm"), e, False)
    specs += _norm("language_model.model.norm", ("text", "final_norm"), e, False)
    if not t.tie_embeddings:
        specs += _dense("language_model.lm_head", ("text", "lm_head"), (e,), (vocab,))
    return specs + (_vision_head_specs(v) if vision_head else [])


def save_hf_checkpoint(params: Any, cfg: ModelConfig, directory: str, *, dtype: str = "float32",
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, **token_ids: int | None) -> list[str]:
    """Write config.json and the safetensors of a `Gemma3ForConditionalGeneration` checkpoint."""
    hf_config = to_hf_config(cfg, **token_ids)
    hf_config.dtype = dtype
    os.makedirs(directory, exist_ok=True)
    hf_config.to_json_file(os.path.join(directory, "config.json"))
    return ["config.json", *write_safetensors_dir(to_hf_tensors(params, cfg, dtype=dtype), directory,
                                                  max_shard_bytes=max_shard_bytes)]


def load_hf_checkpoint(directory: str, *, max_images: int = 1, dtype: str = "float32"):
    """(ModelConfig, parameter state) of a local Gemma 3 checkpoint directory."""
    from transformers import Gemma3Config

    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise HFCheckpointError(f"{directory} has no config.json")
    hf_config = Gemma3Config.from_json_file(config_path)
    cfg = from_hf_config(hf_config, max_images=max_images, dtype=dtype)
    tensors = read_safetensors_dir(directory)
    return cfg, from_hf_tensors(tensors, cfg, vision_head=bool(getattr(hf_config.vision_config,
                                                                       "vision_use_head", False)))
