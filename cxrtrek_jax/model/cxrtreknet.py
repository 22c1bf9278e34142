"""CXRTrekNet: SigLIP-style vision tower -> projector -> decoder; the LLaVA family (MLP
projector, Llama decoder) or the Gemma 3 family (`gemma3.py`), chosen by the config.

    model = CXRTrekNet(get_config("tiny"), rngs=nnx.Rngs(0))
    logits, _ = model(tokens, images, image_mask, positions, segment_ids)

Shapes: B batch, L tokens, M image slots, H = W image size, N tokens per
image, E text embed, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cxrtrek_jax.model.config import ModelConfig
from cxrtrek_jax.model.gemma3 import Gemma3Decoder, Gemma3Projector
from cxrtrek_jax.model.kv_cache import KVCache
from cxrtrek_jax.model.layers import to_dtype
from cxrtrek_jax.model.llama import LlamaDecoder
from cxrtrek_jax.model.lora import apply_lora
from cxrtrek_jax.model.projector import Projector
from cxrtrek_jax.model.splice import (
    check_image_token_counts,
    compact_present_images,
    image_token_mismatch,
    image_token_positions,
    splice_image_features,
)
from cxrtrek_jax.model.vision import VisionTower

__all__ = ["CXRTrekNet"]


def _concrete(*values) -> bool:
    """True when no value is a JAX tracer (i.e. we are not inside jit/grad tracing)."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(values))


class CXRTrekNet(nnx.Module):
    """The staged chest X-ray vision-language model (towers: vision, projector, text)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = to_dtype(config.dtype)
        self.vision = VisionTower(config.vision, dtype=dtype, remat=config.remat, rngs=rngs)
        widths = dict(vision_width=config.vision.width, text_width=config.text.embed_dim, dtype=dtype, rngs=rngs)
        self.projector = (Gemma3Projector(config.projector, grid_size=config.vision.grid_size, **widths)
                          if config.projector.kind == "gemma3" else Projector(config.projector, **widths))
        decoder = Gemma3Decoder if config.text.family == "gemma3" else LlamaDecoder
        self.text = decoder(config.text, dtype=dtype, remat=config.remat, rngs=rngs)
        if config.lora is not None:
            apply_lora(self, config.lora, rngs=rngs)

    def encode_images(self, images: jax.Array) -> jax.Array:
        """float32[B, M, H, W] in [0, 1] -> projected features [B, M, N, E] (compute dtype)."""
        if images.ndim != 4:
            raise ValueError(f"images must be [batch, slots, height, width], got shape {images.shape}")
        batch, slots, height, width = images.shape
        features = self.projector(self.vision(images.reshape(batch * slots, height, width)))
        return features.reshape(batch, slots, self.config.tokens_per_image, self.config.text.embed_dim)

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache of `max_length` slots per sample."""
        text = self.config.text
        return KVCache.init(num_layers=text.num_layers, batch_size=batch_size, max_length=max_length,
                            num_kv_heads=text.num_kv_heads, head_dim=text.head_dim,
                            dtype=to_dtype(self.config.dtype))

    def __call__(self, tokens: jax.Array, images: jax.Array | None = None, image_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 cache: KVCache | None = None, cache_index: jax.Array | None = None, *,
                 image_features: jax.Array | None = None,
                 return_hidden: bool = False) -> tuple[jax.Array, KVCache | None]:
        """Next-token logits float32[B, L, V] and the updated cache (None without one).

        return_hidden: the final hidden states [B, L, E] instead of the logits (compute dtype,
        NaN on bad rows like the logits); `self.text.head(hidden)` gives the logits.

        tokens int32[B, L], image placeholders already expanded (N per
        present image). images float32[B, M, H, W] in [0, 1] with image_mask
        bool[B, M] (False = absent slot; default all present), or instead
        precomputed `image_features` [B, M, N, E] from `encode_images`.
        positions int32[B, L] (default 0..L-1, or cache_index + 0..L-1 with a
        cache); segment_ids int32[B, L] (1.. per packed sequence, 0 =
        padding; default all 1). With `cache`, `cache_index` int32[B] is the
        slot of each sample's first token; the caller advances it by the
        number of real tokens. Rows with an image-token count mismatch (see
        `splice.py`) or a chunk running past the cache end get NaN logits
        under jit; with concrete inputs these raise ValueError instead.
        """
        self._check_static_shapes(tokens, images, image_mask, image_features, cache, cache_index)
        batch, length = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            start = jnp.zeros((batch,), jnp.int32) if cache_index is None else cache_index
            positions = start[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
        if images is not None:
            image_features = self.encode_images(images)
        if image_features is not None and image_mask is None:
            image_mask = jnp.ones(image_features.shape[:2], bool)
        if image_features is None:
            image_mask = None

        seen = jnp.zeros((batch,), jnp.int32) if cache is None else cache.image_tokens_seen
        is_image, feature_index, seen_after = image_token_positions(
            tokens, segment_ids, self.config.image_token_id, seen)
        embeds = self.text.embed(tokens)
        if image_features is not None:
            flat = compact_present_images(image_features, image_mask)
            embeds = splice_image_features(embeds, is_image, feature_index, flat)

        bad_rows = image_token_mismatch(seen, seen_after, image_mask, self.config.tokens_per_image,
                                        complete=cache is None)
        if cache is not None:
            slots = cache_index[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
            bad_rows |= jnp.any((slots >= cache.max_length) & (segment_ids != 0), axis=1)
        if _concrete(tokens, segment_ids, image_mask, cache_index, seen):
            self._raise_if_inconsistent(tokens, segment_ids, image_mask, seen, cache, cache_index)

        extra = {}
        if self.config.text.family == "gemma3":  # which image each image token belongs to, -1 for text
            extra["image_blocks"] = jnp.where(is_image, feature_index // self.config.tokens_per_image, -1)
        logits, cache = self.text(embeds, positions, segment_ids, cache, cache_index,
                                  return_hidden=return_hidden, **extra)
        logits = jnp.where(bad_rows[:, None, None], jnp.nan, logits)
        if cache is not None:
            cache = cache.replace(image_tokens_seen=seen_after)
        return logits, cache

    def _check_static_shapes(self, tokens, images, image_mask, image_features, cache, cache_index) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        if images is not None and image_features is not None:
            raise ValueError("pass either images or image_features, not both")
        slots_array = images if images is not None else image_features
        if slots_array is not None:
            if slots_array.shape[0] != tokens.shape[0]:
                raise ValueError(f"images have batch {slots_array.shape[0]}, tokens have batch {tokens.shape[0]}")
            if slots_array.shape[1] > self.config.max_images:
                raise ValueError(f"{slots_array.shape[1]} image slots exceed max_images={self.config.max_images}")
            if image_mask is not None and image_mask.shape != slots_array.shape[:2]:
                raise ValueError(f"image_mask shape {image_mask.shape} != image slots {slots_array.shape[:2]}")
        if (cache is None) != (cache_index is None):
            raise ValueError("cache and cache_index must be given together")

    def _raise_if_inconsistent(self, tokens, segment_ids, image_mask, seen, cache, cache_index) -> None:
        check_image_token_counts(tokens, segment_ids, image_mask, image_token_id=self.config.image_token_id,
                                 tokens_per_image=self.config.tokens_per_image, tokens_seen=seen,
                                 complete=cache is None)
        if cache is not None:
            real = np.asarray(segment_ids) != 0
            last_slot = np.asarray(cache_index)[:, None] + np.arange(tokens.shape[1])[None, :]
            over = np.flatnonzero(np.any(real & (last_slot >= cache.max_length), axis=1))
            if over.size:
                raise ValueError(f"samples {over.tolist()} run past the cache end ({cache.max_length} slots)")
