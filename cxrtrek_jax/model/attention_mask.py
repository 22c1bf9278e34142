"""Attention masks for padded and packed sequences, with or without a KV cache.

Tokens carry segment ids (1.. per packed sequence, 0 = padding). A query
attends to a key when both are in the same non-zero segment and the key's
slot is not after the query's slot (causal). Without a cache the slots are
the positions in the row; with a cache, the query chunk sits at slots
`offset[b] + i` of the cache, and keys are the cache slots 0..S-1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["causal_segment_mask"]


def causal_segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                        q_offset: jax.Array | None = None) -> jax.Array:
    """bool[B, T, S]: may query t attend to key slot s.

    q_segment_ids: int32[B, T]; kv_segment_ids: int32[B, S] (0 = empty);
    q_offset: int32[B], the key slot of query 0 (None: 0, i.e. no cache).
    Rows of padding queries (segment 0) are all False.
    """
    batch, length = q_segment_ids.shape
    offset = jnp.zeros((batch,), jnp.int32) if q_offset is None else q_offset.astype(jnp.int32)
    q_slot = offset[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
    kv_slot = jnp.arange(kv_segment_ids.shape[1], dtype=jnp.int32)
    causal = kv_slot[None, None, :] <= q_slot[:, :, None]
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    real_query = (q_segment_ids != 0)[:, :, None]
    return causal & same_segment & real_query
