"""Analytic model FLOPs of CXRTrekNet (matmuls of the vision tower, projector and decoder).

Convention: a multiply-add counts as 2 FLOPs; only matrix products are counted (norms, softmax,
activations, RoPE and the embedding lookup are left out); attention scores and the weighted sum
are counted over the full L x L (resp. N x N) square, which is what the model computes (the
causal mask is applied, not exploited). A training step is 3 x the forward (backward = 2 x
forward); rematerialisation's recomputed forward is hardware work, not model work, and is
reported separately (`hardware_train_flops`).
"""

from __future__ import annotations

import dataclasses

from cxrtrek_jax.model import ModelConfig

__all__ = ["ForwardFlops", "forward_flops", "train_flops", "hardware_train_flops"]


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """Forward-pass FLOPs of one batch, by part (floats, FLOPs)."""

    vision: float
    projector: float
    text_dense: float
    text_attention: float
    lm_head: float

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.text_dense + self.text_attention + self.lm_head


def _vision_per_image(cfg: ModelConfig) -> float:
    v = cfg.vision
    n, w = v.tokens_per_image, v.width
    patch = 2.0 * n * v.num_channels * v.patch_size**2 * w
    dense = 2.0 * n * (4 * w * w + 2 * w * v.mlp_dim)
    attention = 4.0 * n * n * w
    return patch + v.feature_layer_index * (dense + attention)


def forward_flops(cfg: ModelConfig, *, batch: int, seq_len: int, images: int,
                  head_tokens: int | None = None) -> ForwardFlops:
    """FLOPs of one forward pass over `batch` rows of `seq_len` tokens with `images` images
    run through the vision tower (the JAX model runs every slot, B x M; PyTorch LLaVA only the
    present ones: pass what the implementation computes). head_tokens: positions the LM head
    is needed at (training: the answer tokens the loss reads); None = every token."""
    t, v = cfg.text, cfg.vision
    tokens = batch * seq_len
    per_token_attn_proj = t.embed_dim * t.head_dim * (2 * t.num_heads + 2 * t.num_kv_heads)
    per_token_mlp = 3 * t.embed_dim * t.mlp_dim
    text_dense = 2.0 * tokens * t.num_layers * (per_token_attn_proj + per_token_mlp)
    text_attention = 4.0 * batch * seq_len**2 * t.num_heads * t.head_dim * t.num_layers
    if cfg.projector.kind == "gemma3":  # pooled tokens through one [vision width, text embed] map
        projector = 2.0 * images * cfg.tokens_per_image * v.width * t.embed_dim
    else:
        projector_tokens = images * v.tokens_per_image
        projector = 2.0 * projector_tokens * (v.width * t.embed_dim + t.embed_dim * t.embed_dim)
    return ForwardFlops(
        vision=images * _vision_per_image(cfg),
        projector=projector,
        text_dense=text_dense,
        text_attention=text_attention,
        lm_head=2.0 * (tokens if head_tokens is None else head_tokens) * t.embed_dim * t.vocab_size,
    )


def train_flops(cfg: ModelConfig, *, batch: int, seq_len: int, images: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward)."""
    return 3.0 * forward_flops(cfg, batch=batch, seq_len=seq_len, images=images).total


def hardware_train_flops(cfg: ModelConfig, *, batch: int, seq_len: int, images: int) -> float:
    """Training-step FLOPs including the forward recomputed by per-block remat (4 x forward of
    the blocks when `cfg.remat`; the LM head and projector are not rematerialised)."""
    fwd = forward_flops(cfg, batch=batch, seq_len=seq_len, images=images)
    if not cfg.remat:
        return 3.0 * fwd.total
    recomputed = fwd.vision + fwd.text_dense + fwd.text_attention
    return 3.0 * fwd.total + recomputed
