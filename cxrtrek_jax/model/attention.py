"""Scaled dot-product attention with grouped-query heads; softmax in float32.

The core runs on head-major operands (q [B, K, G*T, D], k/v [B, K, S, D]: the G query heads
sharing a kv head are stacked along the query axis) and has a hand-written backward pass whose
products all contract along an operand's leading or trailing axis as XLA CPU's GEMMs want them,
so only the small [.., T, D] operands are ever transposed, never the [.., T, S] probabilities
(autodiff of the einsums made XLA write transposed copies of those). Same maths as
softmax(q k^T * scale) v with the masked logits replaced by a large negative constant.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cxrtrek_jax.model.backward_passes import hand_written_backward_enabled

__all__ = ["dot_product_attention"]

# Large finite negative logit for masked keys: fully masked (padding) rows
# stay finite (uniform weights) instead of producing NaN.
_MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def _where_mask(mask: jax.Array | None, x: jax.Array, fill: float) -> jax.Array:
    """x [B, K, G*T, S] with entries outside mask bool[B, T, S] (shared by the K x G heads)
    replaced by `fill`; mask None keeps everything."""
    if mask is None:
        return x
    batch, kv_heads, rows, keys = x.shape
    groups = rows // mask.shape[1]
    grouped = x.reshape(batch, kv_heads, groups, mask.shape[1], keys)
    return jnp.where(mask[:, None, None], grouped, fill).reshape(x.shape)


def _probs(q: jax.Array, k: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
    """float32[B, K, G*T, S] attention weights of q [B, K, G*T, D] over k [B, K, S, D]."""
    logits = jnp.einsum("bkmd,bksd->bkms", q, k, preferred_element_type=jnp.float32) * scale
    return jax.nn.softmax(_where_mask(mask, logits, _MASKED_LOGIT), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
    """q [B, K, G*T, D], k/v [B, K, S, D], mask bool[B, T, S] or None -> [B, K, G*T, D]."""
    return jnp.einsum("bkms,bksd->bkmd", _probs(q, k, mask, scale).astype(v.dtype), v)


def _attention_fwd(q, k, v, mask, scale):
    probs = _probs(q, k, mask, scale)
    out = jnp.einsum("bkms,bksd->bkmd", probs.astype(v.dtype), v)
    return out, (q, k, v, mask, probs)


def _attention_bwd(scale, residuals, d_out):
    """Gradients of `_attention`; dK and dV are formed transposed ([B, K, D, S]) so that the
    [.., G*T, S] operands are contracted along their leading axis in place."""
    q, k, v, mask, probs = residuals
    d_probs = jnp.einsum("bkmd,bksd->bkms", d_out, v, preferred_element_type=jnp.float32)
    d_logits = probs * (d_probs - jnp.sum(probs * d_probs, axis=-1, keepdims=True))
    d_logits = _where_mask(mask, d_logits, 0.0) * scale
    dq = jnp.einsum("bkms,bksd->bkmd", d_logits.astype(q.dtype), k)
    dk_t = jnp.einsum("bkmd,bkms->bkds", q, d_logits.astype(q.dtype))
    dv_t = jnp.einsum("bkmd,bkms->bkds", d_out, probs.astype(d_out.dtype))
    return dq, dk_t.swapaxes(-1, -2).astype(k.dtype), dv_t.swapaxes(-1, -2).astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


# Causal self-attention over at least this many positions skips the masked upper-right block.
MIN_CAUSAL_SPLIT = 256


def _grouped_queries(q: jax.Array, kv_heads: int) -> jax.Array:
    """q [B, T, H, D] -> [B, K, G*T, D] (the G query heads of a kv head stacked along the rows)."""
    batch, length, heads, head_dim = q.shape
    groups = heads // kv_heads
    grouped = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    return grouped.reshape(batch, kv_heads, groups * length, head_dim)


def _ungrouped(out: jax.Array, heads: int) -> jax.Array:
    """[B, K, G*T, D] -> [B, T, H, D] (inverse of `_grouped_queries`)."""
    batch, kv_heads, rows, head_dim = out.shape
    groups = heads // kv_heads
    length = rows // groups
    out = out.reshape(batch, kv_heads, groups, length, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, length, heads, head_dim)


def _causal_halves(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """Causal self-attention (T == S) in two query halves: the first half's keys are only the
    first half (its block of the second half is all masked), so 3/4 of the T x S products are
    formed. q [B, T, H, D], k/v [B, K, T, D] (head-major) -> [B, T, H, D]."""
    half = q.shape[1] // 2
    heads = q.shape[2]
    first = _attention(_grouped_queries(q[:, :half], k.shape[1]), k[:, :, :half], v[:, :, :half],
                       mask[:, :half, :half], scale)
    second = _attention(_grouped_queries(q[:, half:], k.shape[1]), k, v, mask[:, half:], scale)
    return jnp.concatenate([_ungrouped(first, heads), _ungrouped(second, heads)], axis=1)


def _one_query(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
    """Attention of one query per row (a decoding step) over keys in their stored layout:
    q [B, 1, H, D], k/v [B, S, K, D], mask bool[B, 1, S] or None -> [B, 1, H, D].

    Scores and the weighted sum are broadcast products reduced over D resp. S, which XLA fuses
    into single passes over k and v; the einsum path would first transpose k and v to head-major
    ([B, K, S, D]), a copy of the whole cache per layer and step."""
    batch, _, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(batch, 1, kv_heads, heads // kv_heads, head_dim)       # [B, 1, K, G, D]
    logits = jnp.sum(grouped.astype(jnp.float32) * k[:, :, :, None, :].astype(jnp.float32), axis=-1) * scale
    if mask is not None:                                                        # logits [B, S, K, G]
        logits = jnp.where(mask[:, 0, :, None, None], logits, _MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=1)
    out = jnp.sum(probs[..., None] * v[:, :, :, None, :].astype(jnp.float32), axis=1)  # [B, K, G, D]
    return out.reshape(batch, 1, heads, head_dim)


def _plain_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
    """The same attention as plain einsums over every key position, for JAX to differentiate
    (outside `hand_written_backward`, see `backward_passes`): q [B, T, H, D], k/v [B, S, K, D]
    in their stored layout, mask bool[B, T, S] or None -> [B, T, H, D]."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", grouped, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, length, heads, head_dim)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
                          scale: float, causal: bool = False) -> jax.Array:
    """softmax(q k^T * scale) v.

    q [B, T, H, D]; k, v [B, S, K, D] with H a multiple of K (query head h
    uses kv head h // (H // K)); mask bool[B, T, S] or None (all visible).
    causal: the caller promises that no query attends to a key after it (mask[b, t, s] is
    False for s > t, T == S; e.g. `causal_segment_mask` without a cache); then, for even T of
    at least MIN_CAUSAL_SPLIT, the all-masked upper-right quarter of the scores is skipped
    (same result: those keys get zero weight either way). Outside `hand_written_backward` (see
    `backward_passes`: the train step on TPU/GPU) the plain einsums over every key, which JAX
    differentiates, instead of the head-major core with its hand-written backward pass.
    One query per row (T == 1, a decoding step) reads k and v in place (`_one_query`).
    Returns [B, T, H, D] in q's dtype.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    if causal and mask is None:
        raise ValueError("dot_product_attention(causal=True) needs the causal mask (got mask=None)")
    if length == 1 and not causal:
        return _one_query(q, k, v, mask, scale).astype(q.dtype)
    if not hand_written_backward_enabled():
        return _plain_attention(q, k, v, mask, scale).astype(q.dtype)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if causal and length == k.shape[2] and length % 2 == 0 and length >= MIN_CAUSAL_SPLIT:
        return _causal_halves(q, k, v, mask, scale).astype(q.dtype)
    out = _attention(_grouped_queries(q, kv_heads), k, v, mask, scale)
    return _ungrouped(out, heads).astype(q.dtype)
