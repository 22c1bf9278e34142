"""Scaled dot-product attention with grouped-query heads; softmax in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dot_product_attention"]

# Large finite negative logit for masked keys: fully masked (padding) rows
# stay finite (uniform weights) instead of producing NaN.
_MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
                          scale: float) -> jax.Array:
    """softmax(q k^T * scale) v.

    q [B, T, H, D]; k, v [B, S, K, D] with H a multiple of K (query head h
    uses kv head h // (H // K)); mask bool[B, T, S] or None (all visible).
    Returns [B, T, H, D] in q's dtype.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    grouped = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", grouped, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, length, heads, head_dim)
