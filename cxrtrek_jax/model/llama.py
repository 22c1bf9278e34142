"""Llama-style decoder: RMSNorm, rotate-half RoPE, grouped-query attention,
SwiGLU MLP, optional tied embeddings, and a KV cache passed explicitly.

Shapes: B batch, T chunk length, S cache length, E embed, H heads,
K kv heads, D head_dim, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cxrtrek_jax.model.attention import dot_product_attention
from cxrtrek_jax.model.attention_mask import causal_segment_mask
from cxrtrek_jax.model.config import TextConfig
from cxrtrek_jax.model.kv_cache import KV_AXES, KVCache, write_chunk
from cxrtrek_jax.model.layers import Dense, Embed, RMSNorm, activation
from cxrtrek_jax.model.logical import constrain

__all__ = ["apply_rope", "LlamaAttention", "LlamaMLP", "LlamaBlock", "LlamaDecoder"]


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the Hugging Face rotate-half layout.

    x [B, T, H, D] (D even), positions int32[B, T]. Dimension i < D/2 pairs
    with i + D/2; frequency of pair i is theta ** (-2i / D). Angles in float32.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated * sin


class LlamaAttention(nnx.Module):
    """GQA self-attention. q_proj [E, H, D], k/v_proj [E, K, D], o_proj [H, D, E]; no biases."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.q_proj = Dense((e,), (h, d), in_names=("embed",), out_names=("heads", "head_dim"), **common)
        self.k_proj = Dense((e,), (k, d), in_names=("embed",), out_names=("kv_heads", "head_dim"), **common)
        self.v_proj = Dense((e,), (k, d), in_names=("embed",), out_names=("kv_heads", "head_dim"), **common)
        self.o_proj = Dense((h, d), (e,), in_names=("heads", "head_dim"), out_names=("embed",), **common)
        self.rope_theta = cfg.rope_theta
        self.scale = cfg.head_dim**-0.5

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
                 kv: tuple[jax.Array, jax.Array] | None, cache_index: jax.Array | None,
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [B, T, E] -> ([B, T, E], updated (k, v) cache of this layer or None).

        mask bool[B, T, T] without a cache, bool[B, T, S] with one.
        """
        q = constrain(apply_rope(self.q_proj(x), positions, self.rope_theta),
                      ("batch", "length", "heads", "head_dim"))
        k = constrain(apply_rope(self.k_proj(x), positions, self.rope_theta),
                      ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(self.v_proj(x), ("batch", "length", "kv_heads", "head_dim"))
        if kv is not None:
            k = constrain(write_chunk(kv[0], k, cache_index), KV_AXES)
            v = constrain(write_chunk(kv[1], v, cache_index), KV_AXES)
            kv = (k, v)
        # Without a cache the mask is `causal_segment_mask` over the row itself: causal.
        out = dot_product_attention(q, k, v, mask, scale=self.scale, causal=kv is None)
        return self.o_proj(out), kv


class LlamaMLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); gate/up [E, M], down [M, E]; act is
    `cfg.mlp_activation` (silu: SwiGLU, Llama; gelu_pytorch_tanh: GeGLU, Gemma 3)."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        e, m = cfg.embed_dim, cfg.mlp_dim
        common = dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.gate_proj = Dense((e,), (m,), in_names=("embed",), out_names=("mlp",), **common)
        self.up_proj = Dense((e,), (m,), in_names=("embed",), out_names=("mlp",), **common)
        self.down_proj = Dense((m,), (e,), in_names=("mlp",), out_names=("embed",), **common)

        self.act = jax.nn.silu if cfg.mlp_activation == "silu" else activation(cfg.mlp_activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.act(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(hidden, ("batch", "length", "mlp")))


class LlamaBlock(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps, dtype=dtype)
        self.attn = LlamaAttention(cfg, dtype=dtype, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps, dtype=dtype)
        self.mlp = LlamaMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, mask, kv, cache_index):
        attn_out, kv = self.attn(self.input_norm(x), positions, mask, kv, cache_index)
        x = x + attn_out
        x = x + self.mlp(self.post_attn_norm(x))
        return constrain(x, ("batch", "length", "embed")), kv


def _run_block(block: LlamaBlock, x, positions, mask, kv, cache_index):
    return block(x, positions, mask, kv, cache_index)


class LlamaDecoder(nnx.Module):
    """Token embedding, `num_layers` blocks, final RMSNorm and the LM head.

    embed [V, E]; lm_head kernel [E, V] unless `tie_embeddings` (then the
    embedding table is reused and `lm_head` is None).
    """

    def __init__(self, cfg: TextConfig, *, dtype: jnp.dtype, remat: bool, rngs: nnx.Rngs):
        self.embed = Embed(cfg.vocab_size, cfg.embed_dim, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([LlamaBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.embed_dim, eps=cfg.rms_norm_eps, dtype=dtype)
        self.lm_head = (nnx.data(None) if cfg.tie_embeddings else
                        Dense((cfg.embed_dim,), (cfg.vocab_size,), in_names=("embed",), out_names=("vocab",),
                              use_bias=False, dtype=dtype, rngs=rngs))
        self.remat = remat

    def head(self, x: jax.Array) -> jax.Array:
        """Final hidden states [..., E] (after `final_norm`) -> logits float32[..., V]."""
        logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
        return logits.astype(jnp.float32)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 cache: KVCache | None, cache_index: jax.Array | None, *,
                 return_hidden: bool = False) -> tuple[jax.Array, KVCache | None]:
        """Input embeddings x [B, T, E] -> (logits float32[B, T, V], updated cache or None).

        return_hidden: give the final hidden states [B, T, E] (after `final_norm`, compute
        dtype) instead of the logits; `head` maps them to logits (the training loss applies
        it only at answer tokens). With a cache, the chunk is written at slots
        cache_index[b] + t and attends to earlier valid slots of its segment and causally
        within itself.
        """
        if cache is None:
            mask = causal_segment_mask(segment_ids, segment_ids)
            kv_segments = None
        else:
            kv_segments = write_chunk(cache.segment_ids, segment_ids, cache_index)
            mask = causal_segment_mask(segment_ids, kv_segments, cache_index)
        run = nnx.remat(_run_block) if self.remat else _run_block
        x = constrain(x, ("batch", "length", "embed"))
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = run(block, x, positions, mask, kv, cache_index)
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
