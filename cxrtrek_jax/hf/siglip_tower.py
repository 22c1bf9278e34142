"""The SigLIP vision tower both Hugging Face families use (Gemma 3's `vision_tower`, and LLaVA's unless it
is CLIP, `clip_tower`): our `VisionConfig` <-> `transformers.SiglipVisionConfig`, and the tower's tensor specs.

The config is written with `vision_use_head=False`: neither family uses SigLIP's attention-pooling
head, so no unused tensors are written; a checkpoint that has the head (`vision_use_head=True`) is
read with `head_specs`, whose tensors are checked and dropped. Which hidden state the family takes
(and whether SigLIP's `post_layernorm` is applied to it) is the family's part of the mapping.
"""

from __future__ import annotations

from typing import Any

from cxrtrek_jax.hf.errors import refuse
from cxrtrek_jax.hf.tensor_specs import TensorSpec, bias_specs, dense_specs, norm_specs
from cxrtrek_jax.model import ACTIVATIONS, VisionConfig

__all__ = ["MODEL_TYPE", "encoder_specs", "head_specs", "siglip_config", "square_size", "tower_specs",
           "vision_fields"]

MODEL_TYPE = "siglip_vision_model"


def siglip_config(vision: VisionConfig, **extra: Any):
    """The `transformers.SiglipVisionConfig` of `vision` (no pooling head); `extra` adds family fields.

    Refuses (HFConfigError, naming the field) a CLIP-style tower: SigLIP has no class token, no
    pre-norm, and a patch projection with bias."""
    from transformers import SiglipVisionConfig

    for field, siglip in (("class_token", False), ("pre_norm", False), ("patch_bias", True)):
        refuse(getattr(vision, field) != siglip, f"vision.{field}", getattr(vision, field),
               f"a SigLIP vision tower has {field}={siglip}")
    return SiglipVisionConfig(
        hidden_size=vision.width, intermediate_size=vision.mlp_dim, num_hidden_layers=vision.depth,
        num_attention_heads=vision.num_heads, num_channels=vision.num_channels, image_size=vision.image_size,
        patch_size=vision.patch_size, hidden_act=vision.activation, layer_norm_eps=vision.layer_norm_eps,
        vision_use_head=False, **extra)


def square_size(value: Any, field: str) -> int:
    """An image or patch size of a vision config (an int, or a square [h, w]); refuses a non-square one."""
    if isinstance(value, (list, tuple)):
        refuse(len(set(value)) != 1, field, value, "only square sizes are supported")
        value = value[0]
    return int(value)


def vision_fields(vc: Any) -> dict[str, Any]:
    """The `VisionConfig` fields of a `SiglipVisionConfig` (all but `feature_layer` and
    `feature_final_norm`, the family's choice); refuses, naming the field, another tower or activation."""
    refuse(vc.model_type != MODEL_TYPE, "vision_config.model_type", vc.model_type,
           "the vision tower must be SigLIP")
    refuse(vc.hidden_act not in ACTIVATIONS, "vision_config.hidden_act", vc.hidden_act, f"supported: {ACTIVATIONS}")
    return dict(
        image_size=square_size(vc.image_size, "vision_config.image_size"),
        patch_size=square_size(vc.patch_size, "vision_config.patch_size"),
        width=vc.hidden_size, depth=int(vc.num_hidden_layers), num_heads=vc.num_attention_heads,
        mlp_dim=vc.intermediate_size, num_channels=vc.num_channels, activation=vc.hidden_act,
        layer_norm_eps=float(vc.layer_norm_eps))


def tower_specs(v: VisionConfig) -> list[TensorSpec]:
    """Every tensor of the tower (`vision_tower.*`: patch and position embeddings, the encoder
    layers, the post-layernorm), in checkpoint order."""
    e, p = v.width, v.patch_size
    specs = [
        TensorSpec("vision_tower.embeddings.patch_embedding.weight", (e, v.num_channels, p, p),
                   ("vision", "patch_embed", "kernel"), (p, p, v.num_channels, e), "conv"),
        TensorSpec("vision_tower.embeddings.patch_embedding.bias", (e,), ("vision", "patch_embed", "bias"),
                   (e,), "reshape"),
        TensorSpec("vision_tower.embeddings.position_embedding.weight", (v.num_positions, e),
                   ("vision", "pos_embed"), (v.num_positions, e), "reshape"),
    ]
    return specs + encoder_specs(v) + norm_specs("vision_tower.post_layernorm", ("vision", "final_norm"), e, True)


def encoder_specs(v: VisionConfig) -> list[TensorSpec]:
    """The encoder layers (`vision_tower.encoder.layers.*`), named and laid out alike in SigLIP and CLIP."""
    e, h, d, m = v.width, v.num_heads, v.head_dim, v.mlp_dim
    specs = []
    for i in range(v.depth):
        hf, ours = f"vision_tower.encoder.layers.{i}", ("vision", "layers", i)
        specs += norm_specs(f"{hf}.layer_norm1", (*ours, "norm1"), e, True)
        for proj in ("q_proj", "k_proj", "v_proj"):
            specs += dense_specs(f"{hf}.self_attn.{proj}", (*ours, "attn", proj), (e,), (h, d))
            specs += bias_specs(f"{hf}.self_attn.{proj}", (*ours, "attn", proj), (h, d))
        specs += dense_specs(f"{hf}.self_attn.out_proj", (*ours, "attn", "out_proj"), (h, d), (e,))
        specs += bias_specs(f"{hf}.self_attn.out_proj", (*ours, "attn", "out_proj"), (e,))
        specs += norm_specs(f"{hf}.layer_norm2", (*ours, "norm2"), e, True)
        specs += dense_specs(f"{hf}.mlp.fc1", (*ours, "mlp", "fc1"), (e,), (m,))
        specs += bias_specs(f"{hf}.mlp.fc1", (*ours, "mlp", "fc1"), (m,))
        specs += dense_specs(f"{hf}.mlp.fc2", (*ours, "mlp", "fc2"), (m,), (e,))
        specs += bias_specs(f"{hf}.mlp.fc2", (*ours, "mlp", "fc2"), (e,))
    return specs


def head_specs(v: VisionConfig) -> list[TensorSpec]:
    """SigLIP's attention-pooling head (`vision_use_head=True`): unused, dropped on import."""
    e, m = v.width, v.mlp_dim
    shapes = {
        "probe": (1, 1, e), "attention.in_proj_weight": (3 * e, e), "attention.in_proj_bias": (3 * e,),
        "attention.out_proj.weight": (e, e), "attention.out_proj.bias": (e,), "layernorm.weight": (e,),
        "layernorm.bias": (e,), "mlp.fc1.weight": (m, e), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (e, m),
        "mlp.fc2.bias": (e,),
    }
    return [TensorSpec(f"vision_tower.head.{name}", shape, None, None, "drop") for name, shape in shapes.items()]
