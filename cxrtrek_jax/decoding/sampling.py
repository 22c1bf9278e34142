"""Choosing the next token from logits: greedy, or temperature with top-k / top-p.

`SamplingConfig` is static (hashable, part of the compiled answer function):
each distinct setting compiles once. Greedy decoding is `temperature=0`.
Filters apply in the usual order: temperature, then top-k, then top-p
(nucleus), then a categorical draw.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["SamplingConfig", "GREEDY", "sample_tokens", "filter_logits"]

# Logit given to tokens removed by a filter (finite, so no NaN in softmax).
_REMOVED = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen.

    temperature: 0 = greedy (argmax; top_k/top_p ignored); > 0 divides the
        logits before drawing.
    top_k: keep the k most likely tokens (0 = no limit).
    top_p: keep the smallest set of most likely tokens whose probability
        reaches top_p (1.0 = no limit). The most likely token is always kept.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be an integer >= 0, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig()


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """float32[B, V] logits after temperature, top-k and top-p (removed tokens at -1e30)."""
    logits = logits.astype(jnp.float32) / config.temperature
    vocab = logits.shape[-1]
    if 0 < config.top_k < vocab:
        kth = jax.lax.top_k(logits, config.top_k)[0][:, -1:]
        logits = jnp.where(logits >= kth, logits, _REMOVED)
    if config.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < config.top_p  # the first token always has mass_before 0
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, _REMOVED)
    return logits


def sample_tokens(logits: jax.Array, rng: jax.Array, config: SamplingConfig) -> jax.Array:
    """int32[B] next tokens from float32[B, V] logits (rng unused when greedy)."""
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, config), axis=-1).astype(jnp.int32)
