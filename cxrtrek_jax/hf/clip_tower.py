"""The CLIP vision tower of LLaVA-1.5 (`llava-hf/llava-1.5-7b-hf`: config.json `vision_config.model_type`
"clip_vision_model", `transformers.CLIPVisionModel`): our `VisionConfig` <-> `transformers.CLIPVisionConfig`,
and the tower's tensor specs.

CLIPVisionModel embeds an image as a learned class embedding followed by the patch projections (a
convolution without bias), adds position embeddings for grid**2 + 1 positions, applies
`pre_layrnorm`, then the encoder layers (named and laid out as SigLIP's, `siglip_tower.encoder_specs`,
with CLIP's `quick_gelu` MLP). Its `post_layernorm` is applied only to the pooled class token, never
to the hidden states LLaVA takes its features from, so it maps to our `final_norm` with
`feature_final_norm=False` (an unused parameter kept for a 1:1 mapping). In our `VisionConfig` a CLIP
tower is class_token=True, pre_norm=True, patch_bias=False; which hidden state is taken and whether
the class token's feature is kept (`feature_class_token`) is the family's part of the mapping.
"""

from __future__ import annotations

from typing import Any

from cxrtrek_jax.hf import siglip_tower
from cxrtrek_jax.hf.errors import refuse
from cxrtrek_jax.hf.tensor_specs import TensorSpec, norm_specs
from cxrtrek_jax.model import ACTIVATIONS, VisionConfig

__all__ = ["MODEL_TYPE", "TOWER_FIELDS", "clip_config", "is_clip", "tower_specs", "vision_fields"]

MODEL_TYPE = "clip_vision_model"
# The VisionConfig fields every CLIPVisionModel has.
TOWER_FIELDS = {"class_token": True, "pre_norm": True, "patch_bias": False}


def is_clip(vision: VisionConfig) -> bool:
    """Whether `vision` is meant as a CLIP tower (it has a class token); `clip_config` checks the rest."""
    return vision.class_token


def clip_config(vision: VisionConfig, **extra: Any):
    """The `transformers.CLIPVisionConfig` of `vision`; `extra` adds family fields.

    Refuses (HFConfigError, naming the field) a tower CLIP cannot express: one without the class
    token, pre-norm and bias-free patch projection of `TOWER_FIELDS`, or with `feature_final_norm`
    (CLIP's post-layernorm never reaches the hidden states)."""
    from transformers import CLIPVisionConfig

    for field, clip in TOWER_FIELDS.items():
        refuse(getattr(vision, field) != clip, f"vision.{field}", getattr(vision, field),
               f"a CLIP vision tower has {field}={clip}")
    refuse(vision.feature_final_norm, "vision.feature_final_norm", vision.feature_final_norm,
           "CLIP applies its post_layernorm to the pooled class token only, never to the hidden states")
    return CLIPVisionConfig(
        hidden_size=vision.width, intermediate_size=vision.mlp_dim, num_hidden_layers=vision.depth,
        num_attention_heads=vision.num_heads, num_channels=vision.num_channels, image_size=vision.image_size,
        patch_size=vision.patch_size, hidden_act=vision.activation, layer_norm_eps=vision.layer_norm_eps,
        **extra)


def vision_fields(vc: Any) -> dict[str, Any]:
    """The `VisionConfig` fields of a `CLIPVisionConfig`, `TOWER_FIELDS` included (all but
    `feature_layer` and `feature_class_token`, the family's choice; `feature_final_norm` is False);
    refuses, naming the field, another tower or activation."""
    refuse(vc.model_type != MODEL_TYPE, "vision_config.model_type", vc.model_type, "the vision tower must be CLIP")
    refuse(vc.hidden_act not in ACTIVATIONS, "vision_config.hidden_act", vc.hidden_act, f"supported: {ACTIVATIONS}")
    return dict(
        image_size=siglip_tower.square_size(vc.image_size, "vision_config.image_size"),
        patch_size=siglip_tower.square_size(vc.patch_size, "vision_config.patch_size"),
        width=vc.hidden_size, depth=int(vc.num_hidden_layers), num_heads=vc.num_attention_heads,
        mlp_dim=vc.intermediate_size, num_channels=vc.num_channels, activation=vc.hidden_act,
        layer_norm_eps=float(vc.layer_norm_eps), feature_final_norm=False, **TOWER_FIELDS)


def tower_specs(v: VisionConfig) -> list[TensorSpec]:
    """Every tensor of the tower (`vision_tower.*`: class, patch and position embeddings, the
    pre-layernorm, the encoder layers, the post-layernorm), in checkpoint order."""
    e, p = v.width, v.patch_size
    specs = [
        TensorSpec("vision_tower.embeddings.class_embedding", (e,), ("vision", "class_embed"), (e,), "reshape"),
        TensorSpec("vision_tower.embeddings.patch_embedding.weight", (e, v.num_channels, p, p),
                   ("vision", "patch_embed", "kernel"), (p, p, v.num_channels, e), "conv"),
        TensorSpec("vision_tower.embeddings.position_embedding.weight", (v.num_positions, e),
                   ("vision", "pos_embed"), (v.num_positions, e), "reshape"),
        *norm_specs("vision_tower.pre_layrnorm", ("vision", "pre_norm"), e, True),
    ]
    return specs + siglip_tower.encoder_specs(v) + norm_specs("vision_tower.post_layernorm",
                                                              ("vision", "final_norm"), e, True)
