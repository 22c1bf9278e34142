"""LLaVA's multi-modal projector: linear_2(act(linear_1(x))).

linear_1 [vision width, text embed] ("embed", "mlp"), linear_2 [text embed,
text embed] ("mlp", "embed"); the hidden width equals the text embed width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cxrtrek_jax.model.config import ProjectorConfig
from cxrtrek_jax.model.layers import Dense, activation

__all__ = ["Projector"]


class Projector(nnx.Module):
    def __init__(self, cfg: ProjectorConfig, *, vision_width: int, text_width: int, dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.linear_1 = Dense((vision_width,), (text_width,), in_names=("embed",), out_names=("mlp",),
                              use_bias=cfg.use_bias, dtype=dtype, rngs=rngs)
        self.linear_2 = Dense((text_width,), (text_width,), in_names=("mlp",), out_names=("embed",),
                              use_bias=cfg.use_bias, dtype=dtype, rngs=rngs)
        self.act = activation(cfg.activation)

    def __call__(self, features: jax.Array) -> jax.Array:
        """[..., vision width] -> [..., text embed]."""
        return self.linear_2(self.act(self.linear_1(features)))
