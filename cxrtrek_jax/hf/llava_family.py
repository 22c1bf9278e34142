"""The LLaVA family: CXRTrekNet (text.family "llama", projector.kind "mlp") <->
`transformers.LlavaForConditionalGeneration` (SigLIP or CLIP vision tower, 2-layer MLP projector,
Llama text model); config.json `model_type` "llava".

Config mapping (`to_hf_config` / `from_hf_config`):
  * vision -> `SiglipVisionConfig` (`siglip_tower`), or `CLIPVisionConfig`
    (`clip_tower`, LLaVA-1.5 as llava-hf publishes it) when the tower has a
    class token; `vision_config.model_type` says which on import;
  * LLaVA takes `vision_tower(...).hidden_states[vision_feature_layer]`.
    SigLIP: `vision_feature_select_strategy="full"` (no class token to drop);
    its `post_layernorm` is applied to that state only when the vision
    config sets `tie_last_hidden_states=True` and the feature layer is the
    last one; that is our `VisionConfig.feature_final_norm`. CLIP: strategy
    "default" drops the class token's feature (LLaVA-1.5, with
    `vision_feature_layer=-2`), "full" keeps it (grid**2 + 1 image tokens);
    that is our `VisionConfig.feature_class_token`. CLIP's `post_layernorm`
    never reaches the features;
  * text -> `LlamaConfig` (silu, no biases, default RoPE in the rotate-half
    layout, which is also ours: no q/k permutation is needed).

Tensor names are those `save_pretrained` writes (`vision_tower.*`, `multi_modal_projector.linear_{1,2}.*`,
`language_model.model.*`, `language_model.lm_head.weight`, the last absent with tied embeddings;
`tensor_specs.CONDITIONAL_GENERATION_LAYOUT` lists the other spellings read).

The processor (`write_processor`): `LlavaProcessor` with a `JanusImageProcessor`, the tokenizer
and its chat template; an exported directory loads with no network:

    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)     # LlavaProcessor
    tokenizer = AutoTokenizer.from_pretrained(out)

Image preprocessing. Ours (`data_pipeline.files.images`): an 8-bit grayscale file
becomes x / 255; `resize_with_pad` fits it into S x S (longest side S, the
other round(side * S / longest)) with PIL's antialiased BILINEAR on float
("F") pixels, centred at offset floor((S - side) / 2) on black; the vision
tower normalises (x - pixel_mean) / pixel_std. `JanusImageProcessor` (PIL
backend) does the same geometry exactly: longest side to S with the same
rounding (`min_size=1`), BILINEAR, centred pad with offset floor(pad / 2).
Its pad colour is int(255 * image_mean), so the padding is black only when
image_mean < 1 / 255; the normalisation is kept exact by choosing
image_mean = image_std * pixel_mean / pixel_std with image_mean = 2**-9 and
rescale_factor = image_std / (255 * pixel_std) (see
`image_processor_options`). The one difference left is that transformers
resizes 8-bit images through PIL's 8-bit path (two passes, each rounded to
an integer level) where we resize floats: on 8-bit grayscale files the
pixel values differ by less than 1/255 before normalisation (less than
2/255 after it with pixel_std = 0.5; measured 0.98/255 at most over random
and smooth images of 17..1000 px), and are identical when the file is
already S x S. Inputs must be 8-bit images (PIL images or uint8 arrays; a
colour image is used per channel, where we use its luminance). When
torchvision is installed, `AutoProcessor.from_pretrained(out,
backend="pil")` picks this PIL processor; its torchvision twin resizes
differently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrtrek_jax.hf import clip_tower, siglip_tower
from cxrtrek_jax.hf.errors import ExportError, HFConfigError, refuse
from cxrtrek_jax.hf.family_spec import HFFamily
from cxrtrek_jax.hf.tensor_specs import TensorSpec, bias_specs, dense_specs, norm_specs
from cxrtrek_jax.model import ACTIVATIONS, ModelConfig, ProjectorConfig, TextConfig, VisionConfig

__all__ = ["FAMILY", "MODEL_TYPE", "from_hf_config", "image_processor_options", "tensor_specs", "to_hf_config",
           "write_processor"]

MODEL_TYPE = "llava"
_PROCESSOR_IMAGE_MEAN = 2.0**-9  # < 1/255, so JanusImageProcessor pads with int(255 * mean) = 0


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

def to_hf_config(cfg: ModelConfig, *, bos_token_id: int | None = 1, eos_token_id: int | None = 2,
                 pad_token_id: int | None = None):
    """The `transformers.LlavaConfig` of `cfg` (token ids of BOS/EOS/PAD go to the text config)."""
    from transformers import LlamaConfig, LlavaConfig

    vision, text = cfg.vision, cfg.text
    if text.embed_dim % text.num_heads:
        raise HFConfigError(f"text.embed_dim ({text.embed_dim}) must be a multiple of text.num_heads "
                            f"({text.num_heads}) for transformers' LlamaConfig")
    if clip_tower.is_clip(vision):
        vision_config = clip_tower.clip_config(vision)
    else:
        vision_config = siglip_tower.siglip_config(vision, tie_last_hidden_states=vision.feature_final_norm)
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
        vision_feature_select_strategy=_select_strategy(vision), vision_feature_layer=vision.feature_layer,
        multimodal_projector_bias=cfg.projector.use_bias, tie_word_embeddings=text.tie_embeddings)


def _refuse_text(tc: Any) -> dict:
    """The Llama text config's checks; returns its RoPE parameters."""
    refuse(tc.model_type != "llama", "text_config.model_type", tc.model_type, "the text model must be Llama")
    refuse(tc.hidden_act != "silu", "text_config.hidden_act", tc.hidden_act, "the decoder MLP is SwiGLU (silu)")
    refuse(bool(tc.attention_bias), "text_config.attention_bias", tc.attention_bias, "no attention biases")
    refuse(bool(tc.mlp_bias), "text_config.mlp_bias", tc.mlp_bias, "no MLP biases")
    refuse(tc.pretraining_tp not in (None, 1), "text_config.pretraining_tp", tc.pretraining_tp, "must be 1")
    rope = dict(tc.rope_parameters or {})
    refuse(rope.get("rope_type", "default") != "default", "text_config.rope_parameters.rope_type",
           rope.get("rope_type"), "only the default RoPE is supported")
    return rope


def _select_strategy(vision: VisionConfig) -> str:
    """LLaVA's `vision_feature_select_strategy`: "default" drops the class token's feature, "full" keeps
    every token (all there is without a class token)."""
    return "default" if vision.class_token and not vision.feature_class_token else "full"


def _tower_fields(hf_config: Any) -> dict[str, Any]:
    """The VisionConfig fields of the vision tower and of the feature select strategy."""
    vc = hf_config.vision_config
    strategy = hf_config.vision_feature_select_strategy
    if vc.model_type == clip_tower.MODEL_TYPE:
        refuse(strategy not in ("default", "full"), "vision_feature_select_strategy", strategy,
               "'default' drops the class token's feature, 'full' keeps it; nothing else is known")
        return dict(clip_tower.vision_fields(vc), feature_class_token=strategy == "full")
    refuse(vc.model_type != siglip_tower.MODEL_TYPE, "vision_config.model_type", vc.model_type,
           f"the vision tower must be SigLIP ({siglip_tower.MODEL_TYPE!r}) or CLIP ({clip_tower.MODEL_TYPE!r})")
    refuse(strategy != "full", "vision_feature_select_strategy", strategy,
           "SigLIP has no class token; only 'full' keeps every patch feature")
    return dict(siglip_tower.vision_fields(vc),
                feature_final_norm=bool(getattr(vc, "tie_last_hidden_states", False)))


def _vision_config(hf_config: Any) -> VisionConfig:
    fields = _tower_fields(hf_config)
    layer = hf_config.vision_feature_layer
    refuse(not isinstance(layer, int), "vision_feature_layer", layer, "only a single feature layer is supported")
    depth = fields["depth"]
    refuse(not -(depth + 1) <= layer <= depth, "vision_feature_layer", layer,
           f"out of range for {depth} vision layers")
    last_layer = layer % (depth + 1) == depth
    fields["feature_final_norm"] = fields["feature_final_norm"] and last_layer
    vision = VisionConfig(**fields, feature_layer=layer)
    refuse(hf_config.image_seq_length != vision.tokens_per_image, "image_seq_length",
           hf_config.image_seq_length, f"the vision tower gives {vision.tokens_per_image} tokens per image")
    return vision


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
    refuse(model_type != MODEL_TYPE, "model_type", model_type, "only LLaVA configs are supported")
    tc = hf_config.text_config
    rope = _refuse_text(tc)
    refuse(hf_config.projector_hidden_act not in ACTIVATIONS, "projector_hidden_act",
           hf_config.projector_hidden_act, f"supported: {ACTIVATIONS}")
    vision = _vision_config(hf_config)
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
# Tensors
# ---------------------------------------------------------------------------

def _projector_specs(cfg: ModelConfig) -> list[TensorSpec]:
    ev, et = cfg.vision.width, cfg.text.embed_dim
    specs = []
    for name, in_dim in (("linear_1", ev), ("linear_2", et)):
        specs += dense_specs(f"multi_modal_projector.{name}", ("projector", name), (in_dim,), (et,))
        if cfg.projector.use_bias:
            specs += bias_specs(f"multi_modal_projector.{name}", ("projector", name), (et,))
    return specs


def _text_specs(t: TextConfig) -> list[TensorSpec]:
    e, h, k, d, m, vocab = t.embed_dim, t.num_heads, t.num_kv_heads, t.head_dim, t.mlp_dim, t.vocab_size
    specs = [TensorSpec("language_model.model.embed_tokens.weight", (vocab, e), ("text", "embed", "embedding"),
                        (vocab, e), "reshape")]
    for i in range(t.num_layers):
        hf, ours = f"language_model.model.layers.{i}", ("text", "layers", i)
        specs += norm_specs(f"{hf}.input_layernorm", (*ours, "input_norm"), e, False)
        specs += dense_specs(f"{hf}.self_attn.q_proj", (*ours, "attn", "q_proj"), (e,), (h, d))
        specs += dense_specs(f"{hf}.self_attn.k_proj", (*ours, "attn", "k_proj"), (e,), (k, d))
        specs += dense_specs(f"{hf}.self_attn.v_proj", (*ours, "attn", "v_proj"), (e,), (k, d))
        specs += dense_specs(f"{hf}.self_attn.o_proj", (*ours, "attn", "o_proj"), (h, d), (e,))
        specs += norm_specs(f"{hf}.post_attention_layernorm", (*ours, "post_attn_norm"), e, False)
        for proj, in_dim, out_dim in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
            specs += dense_specs(f"{hf}.mlp.{proj}", (*ours, "mlp", proj), (in_dim,), (out_dim,))
    specs += norm_specs("language_model.model.norm", ("text", "final_norm"), e, False)
    if not t.tie_embeddings:
        specs += dense_specs("language_model.lm_head", ("text", "lm_head"), (e,), (vocab,))
    return specs


def tensor_specs(cfg: ModelConfig, vision_head: bool = False) -> list[TensorSpec]:
    """Every HF tensor of the LLaVA checkpoint for `cfg`, in checkpoint order (with `vision_head`,
    also SigLIP's pooling head, dropped on import)."""
    tower = clip_tower if clip_tower.is_clip(cfg.vision) else siglip_tower
    specs = tower.tower_specs(cfg.vision) + _projector_specs(cfg) + _text_specs(cfg.text)
    return specs + (siglip_tower.head_specs(cfg.vision) if vision_head else [])


# ---------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------

def image_processor_options(vision: VisionConfig) -> dict[str, Any]:
    """Keyword arguments of `JanusImageProcessor` reproducing our preprocessing for `vision`.

    Output pixels: (x * rescale_factor - image_mean) / image_std for 8-bit x,
    equal to (x / 255 - pixel_mean) / pixel_std; the pad colour
    int(255 * image_mean) is 0 (see the module docstring). The processor feeds
    RGB, so the vision tower must take 3 channels.
    """
    from PIL import Image

    if vision.num_channels != 3:
        raise ExportError(f"the Hugging Face image processor gives 3-channel pixels; the vision tower takes "
                          f"{vision.num_channels} (vision.num_channels)")
    if vision.pixel_mean > 0:
        image_mean = _PROCESSOR_IMAGE_MEAN
        image_std = image_mean * vision.pixel_std / vision.pixel_mean
    else:
        image_mean, image_std = 0.0, vision.pixel_std
    return {
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": vision.image_size, "width": vision.image_size},
        "min_size": 1,
        "resample": int(Image.Resampling.BILINEAR),
        "do_pad": True,
        "do_rescale": True,
        "rescale_factor": image_std / (255.0 * vision.pixel_std),
        "do_normalize": True,
        "image_mean": [image_mean] * 3,
        "image_std": [image_std] * 3,
    }


def check_export(tokenizer: Any, cfg: ModelConfig) -> dict[str, int]:
    """Refuses a vision tower the processor cannot feed; LlavaConfig needs no token ids beyond bos/eos/pad."""
    image_processor_options(cfg.vision)
    return {}


def write_processor(directory: str | os.PathLike, tokenizer: Any, cfg: ModelConfig) -> None:
    """Write the tokenizer files and processor_config.json of an `AutoProcessor`
    (`LlavaProcessor`: `JanusImageProcessor`, the tokenizer, the chat template) into `directory`.

    tokenizer: our `CXRTrekTokenizer`; its files (and cxrtrek_chat_format.json) are
    written first, then rewritten by `transformers` in its own format.
    """
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from data_pipeline.text.chat_template import jinja_template

    directory = Path(directory)
    tokenizer.save(directory, model_max_length=cfg.text.max_positions)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    processor = LlavaProcessor(
        image_processor=JanusImageProcessorPil(**image_processor_options(cfg.vision)),
        tokenizer=hf_tokenizer,
        patch_size=cfg.vision.patch_size,
        vision_feature_select_strategy=_select_strategy(cfg.vision),
        num_additional_image_tokens=int(cfg.vision.class_token),
        chat_template=jinja_template(tokenizer.format),
        image_token=tokenizer.format.image,
    )
    processor.save_pretrained(str(directory))


FAMILY = HFFamily(
    name="LLaVA",
    model_types=(MODEL_TYPE,),
    config_class="LlavaConfig",
    model_class="LlavaForConditionalGeneration",
    architecture="SigLIP or CLIP + Llama",
    text_family="llama",
    projector_kind="mlp",
    to_hf_config=to_hf_config,
    from_hf_config=from_hf_config,
    tensor_specs=tensor_specs,
    check_export=check_export,
    write_processor=write_processor,
)
