"""The Gemma 3 family: its decoder and multi-modal projector (`TextConfig.family == "gemma3"`,
`ProjectorConfig.kind == "gemma3"`), as in `transformers.models.gemma3`.

Differences from the Llama decoder (`llama.py`), each a config field or part of the family:
  * RMSNorm computes x / rms(x) * (1 + weight) (weights start at 0);
  * four norms per block: x + post_attn_norm(attn(input_norm(x))), then
    x + post_mlp_norm(mlp(pre_mlp_norm(x)));
  * query and key norms (over head_dim, before RoPE);
  * token embeddings scaled by sqrt(embed_dim) (image features are spliced in unscaled);
  * attention logits scaled by query_pre_attn_scalar ** -0.5;
  * the gate activation `mlp_activation` (gelu_pytorch_tanh);
  * "sliding" layers see keys of the last `sliding_window` slots (their own included)
    and use `local_rope_theta`; "full" layers use `rope_theta` with linear scaling
    `rope_scaling_factor`;
  * `bidirectional_image_attention`: the tokens of one image also attend to the image's
    later tokens (Hugging Face's `token_type_ids` block mask; an image is its run of
    `tokens_per_image` image tokens, counted per row across cached chunks). With a KV
    cache, an image must be prefilled within one chunk for this to hold.

The projector average-pools the vision tower's patch grid to `tokens_per_image` tokens,
applies a Gemma RMSNorm (eps `norm_eps`) and one linear map [vision width, text embed].

Shapes: B batch, T chunk length, S cache length, E embed, H heads, K kv heads, D head_dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cxrtrek_jax.model.attention import dot_product_attention
from cxrtrek_jax.model.attention_mask import causal_segment_mask
from cxrtrek_jax.model.config import ProjectorConfig, TextConfig
from cxrtrek_jax.model.kv_cache import KV_AXES, KVCache, write_chunk
from cxrtrek_jax.model.layers import PARAM_DTYPE, Dense, Embed, param
from cxrtrek_jax.model.llama import LlamaMLP
from cxrtrek_jax.model.logical import constrain

__all__ = ["GemmaRMSNorm", "Gemma3Attention", "Gemma3Block", "Gemma3Decoder", "Gemma3Projector",
           "gemma3_mask"]


class GemmaRMSNorm(nnx.Module):
    """x / rms(x) * (1 + scale), in float32; scale [dim] starts at 0 (the identity)."""

    def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype, names: tuple[str, ...] = ("embed",)):
        self.scale = param(jnp.zeros((dim,), PARAM_DTYPE), names)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * (1.0 + self.scale[...])).astype(self.dtype)


def _rope(x: jax.Array, positions: jax.Array, theta: float, factor: float) -> jax.Array:
    """Rotate-half RoPE with inverse frequencies theta ** (-2i / D) / factor (linear scaling)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if factor != 1.0:
        inv_freq = inv_freq / factor
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


def layer_type(cfg: TextConfig, index: int) -> str:
    return cfg.layer_types[index] if cfg.layer_types else "full"


class Gemma3Attention(nnx.Module):
    """GQA self-attention with query/key norms; projections as in `LlamaAttention`."""

    def __init__(self, cfg: TextConfig, index: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.q_proj = Dense((e,), (h, d), in_names=("embed",), out_names=("heads", "head_dim"), **common)
        self.k_proj = Dense((e,), (k, d), in_names=("embed",), out_names=("kv_heads", "head_dim"), **common)
        self.v_proj = Dense((e,), (k, d), in_names=("embed",), out_names=("kv_heads", "head_dim"), **common)
        self.o_proj = Dense((h, d), (e,), in_names=("heads", "head_dim"), out_names=("embed",), **common)
        self.q_norm = GemmaRMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype, names=("head_dim",))
        self.k_norm = GemmaRMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype, names=("head_dim",))
        sliding = layer_type(cfg, index) == "sliding"
        self.rope_theta = (cfg.local_rope_theta or cfg.rope_theta) if sliding else cfg.rope_theta
        self.rope_factor = 1.0 if sliding else cfg.rope_scaling_factor
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5

    def __call__(self, x, positions, mask, kv, cache_index):
        q = _rope(self.q_norm(self.q_proj(x)), positions, self.rope_theta, self.rope_factor)
        k = _rope(self.k_norm(self.k_proj(x)), positions, self.rope_theta, self.rope_factor)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(self.v_proj(x), ("batch", "length", "kv_heads", "head_dim"))
        if kv is not None:
            k = constrain(write_chunk(kv[0], k, cache_index), KV_AXES)
            v = constrain(write_chunk(kv[1], v, cache_index), KV_AXES)
            kv = (k, v)
        out = dot_product_attention(q, k, v, mask, scale=self.scale)
        return self.o_proj(out), kv


class Gemma3Block(nnx.Module):
    """x + post_attn_norm(attn(input_norm(x))), then x + post_mlp_norm(mlp(pre_mlp_norm(x)))."""

    def __init__(self, cfg: TextConfig, index: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        norm = dict(eps=cfg.rms_norm_eps, dtype=dtype)
        self.input_norm = GemmaRMSNorm(cfg.embed_dim, **norm)
        self.attn = Gemma3Attention(cfg, index, dtype=dtype, rngs=rngs)
        self.post_attn_norm = GemmaRMSNorm(cfg.embed_dim, **norm)
        self.pre_mlp_norm = GemmaRMSNorm(cfg.embed_dim, **norm)
        self.mlp = LlamaMLP(cfg, dtype=dtype, rngs=rngs)  # gated, with Gemma's gelu_pytorch_tanh
        self.post_mlp_norm = GemmaRMSNorm(cfg.embed_dim, **norm)
        self.sliding = layer_type(cfg, index) == "sliding"

    def __call__(self, x, positions, mask, kv, cache_index):
        attn_out, kv = self.attn(self.input_norm(x), positions, mask, kv, cache_index)
        x = x + self.post_attn_norm(attn_out)
        x = x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x)))
        return constrain(x, ("batch", "length", "embed")), kv


def _run_block(block: Gemma3Block, x, positions, mask, kv, cache_index):
    return block(x, positions, mask, kv, cache_index)


def gemma3_mask(segment_ids: jax.Array, kv_segments: jax.Array, cache_index: jax.Array | None,
                image_blocks: jax.Array | None, sliding_window: int | None) -> jax.Array:
    """bool[B, T, S]: the causal segment mask, plus (image_blocks given) every key of the query's own
    image within the chunk, and (sliding_window given) only keys fewer than `sliding_window` slots
    before the query.

    image_blocks int32[B, T]: per token the index of its image in the row, -1 for text.
    """
    mask = causal_segment_mask(segment_ids, kv_segments, cache_index)
    batch, length = segment_ids.shape
    offset = jnp.zeros((batch,), jnp.int32) if cache_index is None else cache_index.astype(jnp.int32)
    if image_blocks is not None:
        kv_blocks = write_chunk(jnp.full(kv_segments.shape, -1, jnp.int32), image_blocks, offset)
        same_image = (image_blocks[:, :, None] == kv_blocks[:, None, :]) & (image_blocks >= 0)[:, :, None]
        same_segment = (segment_ids[:, :, None] == kv_segments[:, None, :]) & (segment_ids != 0)[:, :, None]
        mask = mask | (same_image & same_segment)
    if sliding_window is not None:
        q_slot = offset[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
        kv_slot = jnp.arange(kv_segments.shape[1], dtype=jnp.int32)
        mask = mask & (kv_slot[None, None, :] > q_slot[:, :, None] - sliding_window)
    return mask


class ScaledEmbed(Embed):
    """Token embedding multiplied by `scale` (sqrt(embed_dim)); `attend` uses the raw table."""

    def __init__(self, vocab_size: int, dim: int, *, scale: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        super().__init__(vocab_size, dim, dtype=dtype, rngs=rngs)
        self.scale = scale

    def __call__(self, tokens: jax.Array) -> jax.Array:
        embeds = super().__call__(tokens)
        return embeds * jnp.asarray(self.scale, jnp.float32).astype(self.dtype)


class Gemma3Decoder(nnx.Module):
    """Scaled token embedding, the blocks, the final norm and the LM head (tied unless not
    `tie_embeddings`). Same call, cache and logits as `LlamaDecoder`, plus `image_blocks`."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, remat: bool, rngs: nnx.Rngs):
        self.embed = ScaledEmbed(cfg.vocab_size, cfg.embed_dim, scale=math.sqrt(cfg.embed_dim), dtype=dtype,
                                 rngs=rngs)
        self.layers = nnx.List([Gemma3Block(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.num_layers)])
        self.final_norm = GemmaRMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps, dtype=dtype)
        self.lm_head = (nnx.data(None) if cfg.tie_embeddings else
                        Dense((cfg.embed_dim,), (cfg.vocab_size,), in_names=("embed",), out_names=("vocab",),
                              use_bias=False, dtype=dtype, rngs=rngs))
        self.sliding_window = cfg.sliding_window
        self.bidirectional_images = cfg.bidirectional_image_attention
        self.remat = remat

    def head(self, x: jax.Array) -> jax.Array:
        """Final hidden states [..., E] (after `final_norm`) -> logits float32[..., V]."""
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        return logits.astype(jnp.float32)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: KVCache | None,
                 cache_index: jax.Array | None, *, image_blocks: jax.Array | None = None,
                 return_hidden: bool = False) -> tuple[jax.Array, KVCache | None]:
        """Input embeddings x [B, T, E] -> (logits float32[B, T, V], updated cache or None);
        return_hidden: the final hidden states [B, T, E] instead (`head` maps them to logits)."""
        if cache is None:
            kv_segments = segment_ids
        else:
            kv_segments = write_chunk(cache.segment_ids, segment_ids, cache_index)
        blocks = image_blocks if self.bidirectional_images else None
        masks = {kind: gemma3_mask(segment_ids, kv_segments, cache_index, blocks,
                                   self.sliding_window if kind else None) for kind in (False, True)
                 if any(block.sliding == kind for block in self.layers)}
        run = nnx.remat(_run_block) if self.remat else _run_block
        x = constrain(x, ("batch", "length", "embed"))
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = run(block, x, positions, masks[block.sliding], kv, cache_index)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        x = self.final_norm(x)
        if return_hidden:
            logits = constrain(x, ("batch", "length", "embed"))
        else:
            logits = constrain(self.head(x), ("batch", "length", "vocab"))
        if cache is None:
            return logits, None
        return logits, cache.replace(k=tuple(new_k), v=tuple(new_v), segment_ids=kv_segments)


class Gemma3Projector(nnx.Module):
    """Average pool of the patch grid to tokens_per_image tokens, Gemma RMSNorm, linear [Ev, Et]."""

    def __init__(self, cfg: ProjectorConfig, *, vision_width: int, text_width: int, grid_size: int,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.norm = GemmaRMSNorm(vision_width, eps=cfg.norm_eps, dtype=dtype)
        self.linear = Dense((vision_width,), (text_width,), in_names=("embed",), out_names=("mlp",),
                            use_bias=False, dtype=dtype, rngs=rngs)
        self.grid = grid_size
        self.side = round(cfg.tokens_per_image**0.5)

    def __call__(self, features: jax.Array) -> jax.Array:
        """[N, grid**2, vision width] (row-major grid) -> [N, tokens_per_image, text embed]."""
        n, _, width = features.shape
        kernel = self.grid // self.side
        grid = features.reshape(n, self.grid, self.grid, width)[:, : self.side * kernel, : self.side * kernel]
        pooled = grid.reshape(n, self.side, kernel, self.side, kernel, width).astype(jnp.float32).mean(axis=(2, 4))
        return self.linear(self.norm(pooled.reshape(n, self.side * self.side, width)))
