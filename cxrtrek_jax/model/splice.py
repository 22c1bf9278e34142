"""Splicing image features into the token embeddings (LLaVA style).

Input tokens already hold the image token id repeated N (tokens per image)
times per present image, in image order. The k-th image token of a row
(counting only tokens with a non-zero segment id, and continuing across
cached prefill chunks via `tokens_seen`) takes feature k of the row's
present images concatenated in slot order: absent slots (image_mask False)
are skipped, so the j-th run of N image tokens takes the j-th present image.

Count consistency: a row is inconsistent when it has more image tokens than
present-image features, or (for a complete, uncached forward) a different
number. `check_image_token_counts` raises a ValueError naming the samples;
the model calls it when its inputs are concrete. Under `jit` the counts are
traced, so the model instead sets the logits of inconsistent rows to NaN:
a mismatch is visible (NaN loss) rather than silently wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "compact_present_images",
    "image_token_positions",
    "splice_image_features",
    "image_token_mismatch",
    "check_image_token_counts",
]


def compact_present_images(features: jax.Array, image_mask: jax.Array) -> jax.Array:
    """[B, M, N, E] features, bool[B, M] mask -> [B, M*N, E] with present images first (slot order kept)."""
    batch, slots, tokens, width = features.shape
    order = jnp.argsort(jnp.logical_not(image_mask), axis=1, stable=True)
    present_first = jnp.take_along_axis(features, order[:, :, None, None], axis=1)
    return present_first.reshape(batch, slots * tokens, width)


def image_token_positions(tokens: jax.Array, segment_ids: jax.Array, image_token_id: int,
                          tokens_seen: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Which tokens are image placeholders and which feature each takes.

    tokens, segment_ids int32[B, L]; tokens_seen int32[B] (image tokens in
    earlier chunks). Returns (is_image bool[B, L], feature_index int32[B, L],
    seen_after int32[B]).
    """
    is_image = (tokens == image_token_id) & (segment_ids != 0)
    running = jnp.cumsum(is_image.astype(jnp.int32), axis=1)
    feature_index = tokens_seen[:, None] + running - 1
    return is_image, feature_index, tokens_seen + running[:, -1]


def splice_image_features(embeds: jax.Array, is_image: jax.Array, feature_index: jax.Array,
                          flat_features: jax.Array) -> jax.Array:
    """embeds [B, L, E] with image positions replaced by flat_features[b, feature_index[b, t]].

    flat_features [B, F, E] (from `compact_present_images`). Indices beyond F
    are clipped here; such rows are flagged by `image_token_mismatch`.
    """
    index = jnp.clip(feature_index, 0, flat_features.shape[1] - 1)
    gathered = jnp.take_along_axis(flat_features, index[:, :, None], axis=1).astype(embeds.dtype)
    return jnp.where(is_image[:, :, None], gathered, embeds)


def image_token_mismatch(tokens_seen: jax.Array, seen_after: jax.Array, image_mask: jax.Array | None,
                         tokens_per_image: int, *, complete: bool) -> jax.Array:
    """bool[B]: rows whose image tokens do not fit the present images' features.

    tokens_seen / seen_after: image tokens before / after this chunk.
    Without images (image_mask None) the chunk must hold no image token.
    complete=True (uncached forward): the counts must be equal; otherwise
    (cached chunk) the tokens so far must not exceed the features.
    """
    if image_mask is None:
        return seen_after != tokens_seen
    available = jnp.sum(image_mask.astype(jnp.int32), axis=1) * tokens_per_image
    return seen_after != available if complete else seen_after > available


def check_image_token_counts(tokens, segment_ids, image_mask, *, image_token_id: int, tokens_per_image: int,
                             tokens_seen=None, complete: bool = True) -> None:
    """Raise ValueError naming every sample whose image tokens do not match its present images.

    Arguments as in the model call, as concrete arrays (host check, not jittable).
    """
    tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
    in_chunk = np.sum((tokens == image_token_id) & (segment_ids != 0), axis=1)
    if image_mask is None:
        bad = np.flatnonzero(in_chunk)
        if bad.size:
            raise ValueError(f"samples {bad.tolist()} hold image tokens but no images were given")
        return
    counts = in_chunk + (0 if tokens_seen is None else np.asarray(tokens_seen))
    present = np.sum(np.asarray(image_mask), axis=1)
    available = present * tokens_per_image
    bad = np.flatnonzero(counts != available if complete else counts > available)
    if bad.size:
        details = "; ".join(
            f"sample {b}: {counts[b]} image tokens, {present[b]} present images x {tokens_per_image} "
            f"= {available[b]} features" for b in bad)
        raise ValueError(f"image token count does not match the present images ({details})")
