"""The Gemma 3 family (Gemma 3, MedGemma): CXRTrekNet (text.family "gemma3", projector.kind "gemma3",
the decoder of `cxrtrek_jax/model/gemma3.py`) <-> `transformers.Gemma3ForConditionalGeneration`
(SigLIP vision tower, Gemma 3 projector, Gemma 3 text model); config.json `model_type` "gemma3".

Config mapping (`to_hf_config` / `from_hf_config`):
  * vision -> `SiglipVisionConfig` (`siglip_tower`); Gemma 3 takes the tower's
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
`language_model.model.*`, no `lm_head` with tied embeddings); the other spellings of
`tensor_specs.CONDITIONAL_GENERATION_LAYOUT` are read too. The Gemma norms' weights are stored as
they are (the +1 is in the computation), so the mapping is exact both ways.

The processor (`write_processor`): `Gemma3Processor` with its PIL image processor; each image is
written "\\n\\n<start_of_image>" + N image tokens + "<end_of_image>\\n\\n", which is the chat
format's image_open / image_close (`chat_image_wrapping` on import, checked on export).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrtrek_jax.hf import siglip_tower
from cxrtrek_jax.hf.errors import ExportError, HFConfigError, refuse
from cxrtrek_jax.hf.family_spec import HFFamily
from cxrtrek_jax.hf.tensor_specs import TensorSpec, dense_specs, norm_specs
from cxrtrek_jax.model import ModelConfig, ProjectorConfig, TextConfig, VisionConfig

__all__ = ["FAMILY", "MODEL_TYPE", "chat_image_wrapping", "check_export", "from_hf_config", "tensor_specs",
           "to_hf_config", "write_processor"]

MODEL_TYPE = "gemma3"
_LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}
# Gemma3Config's default start/end-of-image ids (used when config.json names none).
_DEFAULT_IMAGE_MARKER_IDS = {"boi_token_index": 255_999, "eoi_token_index": 256_000}


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

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
    if abs(cfg.vision.layer_norm_eps - cfg.projector.norm_eps) > 0:
        raise HFConfigError(f"Gemma 3 uses the vision layer_norm_eps ({cfg.vision.layer_norm_eps}) for its "
                            f"projector norm; projector.norm_eps is {cfg.projector.norm_eps}")


def _text_config(text: TextConfig, **token_ids: Any):
    from transformers import Gemma3TextConfig

    full = {"rope_type": "default", "rope_theta": float(text.rope_theta)}
    if text.rope_scaling_factor != 1.0:
        full = {"rope_type": "linear", "rope_theta": float(text.rope_theta), "factor": float(text.rope_scaling_factor)}
    sliding = {"rope_type": "default", "rope_theta": float(text.local_rope_theta or text.rope_theta)}
    layer_types = [{"sliding": "sliding_attention", "full": "full_attention"}[t]
                   for t in (text.layer_types or ("full",) * text.num_layers)]
    return Gemma3TextConfig(
        vocab_size=text.vocab_size, hidden_size=text.embed_dim, intermediate_size=text.mlp_dim,
        num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads, head_dim=text.head_dim, hidden_activation=text.mlp_activation,
        max_position_embeddings=text.max_positions, rms_norm_eps=text.rms_norm_eps,
        query_pre_attn_scalar=text.query_pre_attn_scalar or text.head_dim,
        sliding_window=text.sliding_window or text.max_positions, layer_types=layer_types,
        rope_parameters={"full_attention": full, "sliding_attention": sliding},
        tie_word_embeddings=text.tie_embeddings, attention_bias=False, final_logit_softcapping=None,
        attn_logit_softcapping=None, use_bidirectional_attention=False, **token_ids)


def to_hf_config(cfg: ModelConfig, *, bos_token_id: int | None = 2, eos_token_id: int | list[int] | None = 1,
                 pad_token_id: int | None = 0, boi_token_id: int | None = None, eoi_token_id: int | None = None):
    """The `transformers.Gemma3Config` of `cfg`; boi/eoi (start/end of image) ids default to the image id."""
    from transformers import Gemma3Config

    _check_exportable(cfg)
    text_config = _text_config(cfg.text, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                               pad_token_id=pad_token_id)
    image = cfg.image_token_id
    return Gemma3Config(
        vision_config=siglip_tower.siglip_config(cfg.vision), text_config=text_config,
        mm_tokens_per_image=cfg.tokens_per_image, image_token_index=image,
        boi_token_index=image if boi_token_id is None else boi_token_id,
        eoi_token_index=image if eoi_token_id is None else eoi_token_id,
        tie_word_embeddings=cfg.text.tie_embeddings)


def _refuse_text(tc: Any) -> tuple[dict, dict]:
    """The Gemma 3 text config's checks; returns its (full, sliding) RoPE parameters."""
    refuse(tc.model_type != "gemma3_text", "text_config.model_type", tc.model_type, "the text model must be Gemma 3")
    refuse(tc.hidden_activation not in ("gelu_pytorch_tanh", "silu"), "text_config.hidden_activation",
           tc.hidden_activation, "supported: gelu_pytorch_tanh, silu")
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        refuse(getattr(tc, name, None) is not None, f"text_config.{name}", getattr(tc, name, None),
               "logit soft-capping is not implemented (Gemma 3 does not use it)")
    refuse(bool(getattr(tc, "use_bidirectional_attention", False)), "text_config.use_bidirectional_attention",
           True, "only causal text attention (EmbeddingGemma-style bidirectional text is not supported)")
    refuse(bool(tc.attention_bias), "text_config.attention_bias", tc.attention_bias, "no attention biases")
    unknown = sorted(set(tc.layer_types) - set(_LAYER_TYPES))
    refuse(bool(unknown), "text_config.layer_types", unknown, f"supported: {sorted(_LAYER_TYPES)}")
    rope = dict(tc.rope_parameters or {})
    full, sliding = dict(rope.get("full_attention") or {}), dict(rope.get("sliding_attention") or {})
    refuse(full.get("rope_type", "default") not in ("default", "linear"),
           "text_config.rope_parameters.full_attention.rope_type", full.get("rope_type"), "supported: default, linear")
    refuse(sliding.get("rope_type", "default") != "default",
           "text_config.rope_parameters.sliding_attention.rope_type", sliding.get("rope_type"), "supported: default")
    return full, sliding


def _from_text_config(tc: Any, tie_embeddings: bool) -> TextConfig:
    full, sliding = _refuse_text(tc)
    factor = float(full.get("factor", 1.0)) if full.get("rope_type") == "linear" else 1.0
    layer_types = tuple(_LAYER_TYPES[t] for t in tc.layer_types)
    return TextConfig(
        vocab_size=tc.vocab_size, embed_dim=tc.hidden_size, num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads, num_kv_heads=tc.num_key_value_heads or tc.num_attention_heads,
        head_dim=tc.head_dim or tc.hidden_size // tc.num_attention_heads, mlp_dim=tc.intermediate_size,
        rope_theta=float(full.get("rope_theta", 1_000_000.0)), rms_norm_eps=float(tc.rms_norm_eps),
        tie_embeddings=tie_embeddings, max_positions=tc.max_position_embeddings,
        family="gemma3", mlp_activation=tc.hidden_activation, query_pre_attn_scalar=int(tc.query_pre_attn_scalar),
        layer_types=layer_types, sliding_window=int(tc.sliding_window) if "sliding" in layer_types else None,
        local_rope_theta=float(sliding.get("rope_theta", 10_000.0)), rope_scaling_factor=factor,
        bidirectional_image_attention=True)


def from_hf_config(hf_config: Any, *, max_images: int = 1, dtype: str = "float32") -> ModelConfig:
    """Our `ModelConfig` for a `transformers.Gemma3Config` (or its config.json dict); refuses,
    naming the field, what CXRTrekNet cannot represent."""
    if isinstance(hf_config, Mapping):
        from transformers import Gemma3Config

        hf_config = Gemma3Config.from_dict(dict(hf_config))
    model_type = getattr(hf_config, "model_type", None)
    refuse(model_type != MODEL_TYPE, "model_type", model_type, "expected a Gemma 3 config")
    vc = hf_config.vision_config
    vision = VisionConfig(**siglip_tower.vision_fields(vc), feature_layer=-1, feature_final_norm=True)
    text = _from_text_config(hf_config.text_config, bool(hf_config.tie_word_embeddings))
    projector = ProjectorConfig(kind="gemma3", tokens_per_image=int(hf_config.mm_tokens_per_image),
                                norm_eps=float(vc.layer_norm_eps))
    try:
        return ModelConfig(vision=vision, text=text, image_token_id=hf_config.image_token_id, max_images=max_images,
                           projector=projector, dtype=dtype)
    except ValueError as err:
        raise HFConfigError(f"cannot represent this Gemma 3 config: {err}") from None


# ---------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------

def _text_layer_specs(t: TextConfig, i: int) -> list[TensorSpec]:
    e, h, k, d, m = t.embed_dim, t.num_heads, t.num_kv_heads, t.head_dim, t.mlp_dim
    hf, ours = f"language_model.model.layers.{i}", ("text", "layers", i)
    specs = norm_specs(f"{hf}.input_layernorm", (*ours, "input_norm"), e, False)
    specs += dense_specs(f"{hf}.self_attn.q_proj", (*ours, "attn", "q_proj"), (e,), (h, d))
    specs += dense_specs(f"{hf}.self_attn.k_proj", (*ours, "attn", "k_proj"), (e,), (k, d))
    specs += dense_specs(f"{hf}.self_attn.v_proj", (*ours, "attn", "v_proj"), (e,), (k, d))
    specs += dense_specs(f"{hf}.self_attn.o_proj", (*ours, "attn", "o_proj"), (h, d), (e,))
    specs += norm_specs(f"{hf}.self_attn.q_norm", (*ours, "attn", "q_norm"), d, False)
    specs += norm_specs(f"{hf}.self_attn.k_norm", (*ours, "attn", "k_norm"), d, False)
    specs += norm_specs(f"{hf}.post_attention_layernorm", (*ours, "post_attn_norm"), e, False)
    specs += norm_specs(f"{hf}.pre_feedforward_layernorm", (*ours, "pre_mlp_norm"), e, False)
    for proj, in_dim, out_dim in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
        specs += dense_specs(f"{hf}.mlp.{proj}", (*ours, "mlp", proj), (in_dim,), (out_dim,))
    specs += norm_specs(f"{hf}.post_feedforward_layernorm", (*ours, "post_mlp_norm"), e, False)
    return specs


def tensor_specs(cfg: ModelConfig, vision_head: bool = False) -> list[TensorSpec]:
    """Every HF tensor of the Gemma 3 checkpoint for `cfg`, in checkpoint order (with `vision_head`,
    also SigLIP's pooling head, dropped on import)."""
    v, t = cfg.vision, cfg.text
    e, vocab = t.embed_dim, t.vocab_size
    specs = siglip_tower.tower_specs(v)
    specs += [
        TensorSpec("multi_modal_projector.mm_input_projection_weight", (v.width, e), ("projector", "linear", "kernel"),
                   (v.width, e), "reshape"),
        TensorSpec("multi_modal_projector.mm_soft_emb_norm.weight", (v.width,), ("projector", "norm", "scale"),
                   (v.width,), "reshape"),
        TensorSpec("language_model.model.embed_tokens.weight", (vocab, e), ("text", "embed", "embedding"),
                   (vocab, e), "reshape"),
    ]
    for i in range(t.num_layers):
        specs += _text_layer_specs(t, i)
    specs += norm_specs("language_model.model.norm", ("text", "final_norm"), e, False)
    if not t.tie_embeddings:
        specs += dense_specs("language_model.lm_head", ("text", "lm_head"), (e,), (vocab,))
    return specs + (siglip_tower.head_specs(v) if vision_head else [])


# ---------------------------------------------------------------------------
# Chat format and processor
# ---------------------------------------------------------------------------

def _image_wrapping(boi: str, eoi: str) -> dict[str, str]:
    """The ChatFormat image_open / image_close of `Gemma3Processor.full_image_sequence`."""
    return {"image_open": f"\n\n{boi}", "image_close": f"{eoi}\n\n"}


def chat_image_wrapping(config_json: Mapping[str, Any], hf_tokenizer: Any, added: set[str]) -> dict[str, str]:
    """image_open / image_close around the start/end-of-image tokens config.json names (Gemma3Config's
    defaults when it names none); HFConfigError when they are not added tokens of the tokenizer."""
    boi, eoi = (hf_tokenizer.convert_ids_to_tokens(config_json.get(key, default))
                for key, default in _DEFAULT_IMAGE_MARKER_IDS.items())
    if boi not in added or eoi not in added:
        raise HFConfigError(f"the tokenizer lacks Gemma 3's start/end-of-image tokens "
                            f"(ids {config_json.get('boi_token_index')}, {config_json.get('eoi_token_index')} "
                            f"are {boi!r}, {eoi!r})")
    return _image_wrapping(boi, eoi)


def _image_marker_ids(tokenizer: Any) -> dict[str, int]:
    """Gemma 3's start/end-of-image ids: the added tokens of the format's image_open / image_close."""
    fmt, backend = tokenizer.format, tokenizer.backend
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    found = {}
    for key, text in (("boi_token_id", fmt.image_open), ("eoi_token_id", fmt.image_close)):
        tokens = [t for t in added if t in text]
        if len(tokens) != 1:
            raise ExportError(f"a Gemma 3 export needs one added token in the chat format's "
                              f"{'image_open' if key.startswith('boi') else 'image_close'} {text!r} "
                              "(Gemma 3's start/end-of-image token)")
        found[key] = backend.token_to_id(tokens[0])
    return found


def check_export(tokenizer: Any, cfg: ModelConfig) -> dict[str, int]:
    """The boi/eoi token ids of our tokenizer, after checking that `Gemma3Processor` writes its images
    as the chat format does and feeds the vision tower's channels (ExportError otherwise)."""
    markers = _image_marker_ids(tokenizer)
    fmt = tokenizer.format
    boi, eoi = (tokenizer.backend.id_to_token(markers[k]) for k in ("boi_token_id", "eoi_token_id"))
    if _image_wrapping(boi, eoi) != {"image_open": fmt.image_open, "image_close": fmt.image_close}:
        raise ExportError(f"Gemma3Processor writes each image as '\\n\\n{boi}' + image tokens + '{eoi}\\n\\n'; "
                          f"the chat format has image_open={fmt.image_open!r}, image_close={fmt.image_close!r}")
    if cfg.vision.num_channels != 3:
        raise ExportError(f"the Hugging Face image processor gives 3-channel pixels; the vision tower takes "
                          f"{cfg.vision.num_channels} (vision.num_channels)")
    return markers


def write_processor(directory: str | os.PathLike, tokenizer: Any, cfg: ModelConfig) -> None:
    """The tokenizer files and processor_config.json of an `AutoProcessor` (`Gemma3Processor`: its
    PIL image processor with our rescaling and normalisation). The one chat template (tokenizer
    and processor) writes "<start_of_image>" per image, which the processor expands to
    image_open + N image tokens + image_close; given `tokens_per_image=N` it writes that
    expansion itself (as `render` does).

    Gemma 3's image processor resizes straight to S x S (the aspect is not kept) where ours fits
    the longest side and pads (`data_pipeline.files.images.resize_with_pad`): the pixels agree for
    square images; pad others to a square first.
    """
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from data_pipeline.text.chat_template import jinja_template

    directory = Path(directory)
    fmt, vision = tokenizer.format, cfg.vision
    markers = check_export(tokenizer, cfg)
    boi, eoi = (tokenizer.backend.id_to_token(markers[k]) for k in ("boi_token_id", "eoi_token_id"))
    tokenizer.save(directory, model_max_length=cfg.text.max_positions)
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["extra_special_tokens"] = {"boi_token": boi, "eoi_token": eoi, "image_token": fmt.image}
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    image_processor = Gemma3ImageProcessorPil(
        do_convert_rgb=True, do_resize=True, size={"height": vision.image_size, "width": vision.image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[vision.pixel_mean] * 3,
        image_std=[vision.pixel_std] * 3, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=hf_tokenizer,
                                chat_template=jinja_template(fmt, image_text=boi),
                                image_seq_length=cfg.tokens_per_image)
    processor.save_pretrained(str(directory))


FAMILY = HFFamily(
    name="Gemma 3 / MedGemma",
    model_types=(MODEL_TYPE,),
    config_class="Gemma3Config",
    model_class="Gemma3ForConditionalGeneration",
    architecture="Gemma 3, MedGemma",
    text_family="gemma3",
    projector_kind="gemma3",
    to_hf_config=to_hf_config,
    from_hf_config=from_hf_config,
    tensor_specs=tensor_specs,
    check_export=check_export,
    write_processor=write_processor,
    chat_image_wrapping=chat_image_wrapping,
)
