"""SigLIP-style ViT: patch embedding, learned position embeddings, pre-LN
blocks with a GELU MLP, final LayerNorm, no class token; or, by config, a
CLIP-style one (class token, LayerNorm before the first block, patch
projection without bias, quick_gelu, class token dropped from the features).

Input: grayscale radiographs float32[N, H, W] in [0, 1] (air dark). The
encoder replicates them to `num_channels` equal channels and normalises
channel c as (x - m_c) / s_c (`VisionConfig.channel_normalisation`: SigLIP
mean 0.5, std 0.5 on every channel; an imported CLIP tower its per-channel
values), which is what the Hugging Face image processor with those settings
feeds the PyTorch model. With equal channels the patch convolution
sum_c W_c (x - m_c) / s_c equals (x - m_0) sum_c W_c / s_c plus the constant
sum_c W_c (m_0 - m_c) / s_c summed over the patch: a single-channel
convolution (as a patch matmul) of the image centred on channel 0's mean,
plus a per-embedding offset, which is zero when every channel has the same
mean (and then the result is bit-identical to normalising first whenever
the std is a power of two, as SigLIP's 0.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cxrtrek_jax.model.attention import dot_product_attention
from cxrtrek_jax.model.config import VisionConfig
from cxrtrek_jax.model.layers import PARAM_DTYPE, Dense, LayerNorm, activation, param
from cxrtrek_jax.model.logical import constrain

__all__ = ["PatchEmbed", "VisionAttention", "VisionMLP", "VisionBlock", "VisionTower"]

_TOKENS = ("batch", "patch", "embed")


class PatchEmbed(nnx.Module):
    """Non-overlapping patch projection. kernel [p, p, C, E] (HWIO), bias [E] (None without
    `cfg.patch_bias`, as in CLIP)."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        p, c, e = cfg.patch_size, cfg.num_channels, cfg.width
        kernel = jax.random.normal(rngs.params(), (p, p, c, e), PARAM_DTYPE) / (p * p * c) ** 0.5
        self.kernel = param(kernel, ("patch_height", "patch_width", "channel", "embed"))
        self.bias = param(jnp.zeros((e,), PARAM_DTYPE), ("embed",)) if cfg.patch_bias else None
        self.patch_size = p
        mean, std = cfg.channel_normalisation
        self.centre = mean[0]
        self.channel_scale = tuple(1.0 / s for s in std)
        self.channel_offset = tuple((mean[0] - m) / s for m, s in zip(mean, std))
        self.dtype = dtype

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """Single-channel images [N, H, W] in [0, 1] (replicated to C channels, each normalised,
        module docstring) -> [N, gh * gw, E], row-major grid.

        gh = H // p, gw = W // p; trailing pixels that fill no whole patch are dropped.
        """
        pixels = pixels.astype(jnp.float32) - self.centre
        n, h, w = pixels.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        patches = pixels[:, : gh * p, : gw * p].reshape(n, gh, p, gw, p).transpose(0, 1, 3, 2, 4)
        patches = patches.reshape(n, gh * gw, p, p).astype(self.dtype)
        weights = self.kernel[...]
        scale = jnp.asarray(self.channel_scale, weights.dtype)[:, None]  # [C, 1] against [p, p, C, E]
        kernel = (weights * scale).sum(axis=2).astype(self.dtype)
        embedded = jnp.einsum("ntij,ije->nte", patches, kernel)
        if any(self.channel_offset):  # channels with different means
            offset = jnp.einsum("ijce,c->e", weights, jnp.asarray(self.channel_offset, weights.dtype))
            embedded = embedded + offset.astype(self.dtype)
        return embedded if self.bias is None else embedded + self.bias[...].astype(self.dtype)


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention with biases; q/k/v [E, H, D], out [H, D, E]."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        e, h, d = cfg.width, cfg.num_heads, cfg.head_dim
        proj = dict(in_names=("embed",), out_names=("heads", "head_dim"), use_bias=True, dtype=dtype, rngs=rngs)
        self.q_proj = Dense((e,), (h, d), **proj)
        self.k_proj = Dense((e,), (h, d), **proj)
        self.v_proj = Dense((e,), (h, d), **proj)
        self.out_proj = Dense((h, d), (e,), in_names=("heads", "head_dim"), out_names=("embed",),
                              use_bias=True, dtype=dtype, rngs=rngs)
        self.scale = d**-0.5

    def __call__(self, x: jax.Array) -> jax.Array:
        heads = ("batch", "patch", "heads", "head_dim")
        q = constrain(self.q_proj(x), heads)
        k = constrain(self.k_proj(x), heads)
        v = constrain(self.v_proj(x), heads)
        return self.out_proj(dot_product_attention(q, k, v, None, scale=self.scale))


class VisionMLP(nnx.Module):
    """fc2(act(fc1(x))); fc1 [E, M], fc2 [M, E], with biases."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.fc1 = Dense((cfg.width,), (cfg.mlp_dim,), in_names=("embed",), out_names=("mlp",),
                         use_bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = Dense((cfg.mlp_dim,), (cfg.width,), in_names=("mlp",), out_names=("embed",),
                         use_bias=True, dtype=dtype, rngs=rngs)
        self.act = activation(cfg.activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(constrain(self.act(self.fc1(x)), ("batch", "patch", "mlp")))


class VisionBlock(nnx.Module):
    """Pre-LN encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, dtype=dtype)
        self.attn = VisionAttention(cfg, dtype=dtype, rngs=rngs)
        self.norm2 = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, dtype=dtype)
        self.mlp = VisionMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return constrain(x, _TOKENS)


def _run_block(block: VisionBlock, x: jax.Array) -> jax.Array:
    return block(x)


class VisionTower(nnx.Module):
    """The encoder; position embedding [N, E] ("patch", "embed").

    Blocks after `cfg.feature_layer` exist (for a 1:1 checkpoint mapping)
    but are not run; the final LayerNorm is applied only when
    `cfg.feature_final_norm` (otherwise it is an unused parameter, as in
    Hugging Face LLaVA, which never applies SigLIP's post-layernorm to the
    features it takes from `hidden_states`).
    """

    def __init__(self, cfg: VisionConfig, *, dtype: jnp.dtype, remat: bool, rngs: nnx.Rngs):
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, rngs=rngs)
        if cfg.class_token:
            cls = jax.random.normal(rngs.params(), (cfg.width,), PARAM_DTYPE) / cfg.width**0.5
            self.class_embed = param(cls, ("embed",))
        else:
            self.class_embed = None
        pos = jax.random.normal(rngs.params(), (cfg.num_positions, cfg.width), PARAM_DTYPE) / cfg.width**0.5
        self.pos_embed = param(pos, ("patch", "embed"))
        self.pre_norm = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, dtype=dtype) if cfg.pre_norm else None
        self.layers = nnx.List([VisionBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.final_norm = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, dtype=dtype)
        self.image_size = cfg.image_size
        self.num_feature_blocks = cfg.feature_layer_index
        self.feature_final_norm = cfg.feature_final_norm
        self.drop_class_token = cfg.class_token and not cfg.feature_class_token
        self.remat = remat
        self.dtype = dtype

    def __call__(self, images: jax.Array) -> jax.Array:
        """float32[N, H, W] in [0, 1] -> features [N, tokens_per_image, width]."""
        if images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"vision tower expects images of {self.image_size}x{self.image_size} pixels, "
                             f"got {images.shape[1]}x{images.shape[2]}")
        x = constrain(self._embed_tokens(self.patch_embed(images)), _TOKENS)
        run = nnx.remat(_run_block) if self.remat else _run_block
        for block in self.layers[: self.num_feature_blocks]:
            x = run(block, x)
        x = self.final_norm(x) if self.feature_final_norm else x
        return x[:, 1:] if self.drop_class_token else x

    def _embed_tokens(self, patches: jax.Array) -> jax.Array:
        """Patch embeddings [N, grid**2, E] -> encoder input [N, num_positions, E]: the class
        embedding first (if any), plus the position embeddings, then the pre-norm (if any)."""
        if self.class_embed is not None:
            cls = jnp.broadcast_to(self.class_embed[...].astype(self.dtype), (patches.shape[0], 1, patches.shape[2]))
            patches = jnp.concatenate([cls, patches], axis=1)
        x = patches + self.pos_embed[...].astype(self.dtype)
        return x if self.pre_norm is None else self.pre_norm(x)
