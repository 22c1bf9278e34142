"""The decoder's key/value cache: an explicit pytree passed in and returned.

Samples in a batch advance independently: each chunk of tokens is written at
a per-sample slot `cache_index[b]`, and the caller advances the index by the
number of real (non-padding) tokens of that chunk. Padding tokens of a
right-padded chunk are written with segment id 0, which no query attends to,
and the next chunk overwrites them.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

__all__ = ["KVCache", "KV_AXES", "SLOT_AXES", "write_chunk"]

# Logical axis names of the cache arrays (for sharding rules).
KV_AXES = ("batch", "cache_length", "kv_heads", "head_dim")
SLOT_AXES = ("batch", "cache_length")


@flax.struct.dataclass
class KVCache:
    """Per-layer keys and values plus a per-slot record.

    k, v: tuple (one per decoder layer) of [B, S_max, kv_heads, head_dim]
        arrays in the compute dtype; keys are stored after RoPE.
    segment_ids: int32[B, S_max], the segment id of the token in each slot
        (0 = empty or padding: never attended to).
    image_tokens_seen: int32[B], image-placeholder tokens consumed so far,
        so the image features continue correctly across prefill chunks.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    segment_ids: jax.Array
    image_tokens_seen: jax.Array

    @classmethod
    def init(cls, *, num_layers: int, batch_size: int, max_length: int, num_kv_heads: int, head_dim: int,
             dtype: jnp.dtype) -> "KVCache":
        """An empty cache (all slots segment 0)."""
        shape = (batch_size, max_length, num_kv_heads, head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            segment_ids=jnp.zeros((batch_size, max_length), jnp.int32),
            image_tokens_seen=jnp.zeros((batch_size,), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.segment_ids.shape[1]

    @property
    def batch_size(self) -> int:
        return self.segment_ids.shape[0]

    def prefix(self, length: int) -> "KVCache":
        """The cache cut to its first `length` slots (a static length <= S): attention over it
        costs `length` keys per query instead of S. Writes beyond it are dropped (`write_chunk`),
        so the caller picks a prefix holding every slot it will write; `with_prefix` puts it back."""
        if not 0 < length <= self.max_length:
            raise ValueError(f"cache prefix of {length} slots outside 1..{self.max_length}")
        if length == self.max_length:
            return self
        cut = lambda x: jax.lax.slice_in_dim(x, 0, length, axis=1)  # noqa: E731
        return self.replace(k=tuple(map(cut, self.k)), v=tuple(map(cut, self.v)), segment_ids=cut(self.segment_ids))

    def with_prefix(self, prefix: "KVCache") -> "KVCache":
        """This cache with its first slots replaced by `prefix` (from `prefix`, possibly updated)."""
        if prefix.max_length == self.max_length:
            return prefix
        put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, 0, axis=1)  # noqa: E731
        return self.replace(k=tuple(map(put, self.k, prefix.k)), v=tuple(map(put, self.v, prefix.v)),
                            segment_ids=put(self.segment_ids, prefix.segment_ids),
                            image_tokens_seen=prefix.image_tokens_seen)


def write_chunk(buffer: jax.Array, chunk: jax.Array, index: jax.Array) -> jax.Array:
    """buffer[b, index[b] + t] = chunk[b, t] for every b, t.

    buffer [B, S, ...], chunk [B, T, ...], index int32[B]. Writes that fall
    at or beyond S are dropped (never clamped onto earlier slots).
    """
    batch, length = chunk.shape[:2]
    slots = index.astype(jnp.int32)[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
    rows = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, length))
    return buffer.at[rows, slots].set(chunk.astype(buffer.dtype), mode="drop")
