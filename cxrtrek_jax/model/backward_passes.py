"""Which backward pass the dense and attention layers are differentiated with.

`layers.Dense` and `attention.dot_product_attention` carry hand-written backward passes laid out
for XLA CPU's GEMMs (`jax.custom_vjp`: no transposed copies of the [.., T, S] probabilities, the
narrower operand transposed in a weight gradient; the causal attention split into two query
halves). They win on CPU, where they were measured (the `tiny` step with remat: 31.9 MiB of
temporaries against 64.0 MiB with autodiff), but not on TPU: with them the `cxrtreknet-7b` train
step on v5p 2x2x2 needed 105.79 GiB of HLO temporaries per chip (of 95.74 usable) where 76.28 GiB
had been measured before them; a 2-layer cut of that step (same shapes and batch) needs 36.9 GiB
with them and 22.1 GiB with autodiff (22.8 GiB before them and the answer-only LM head).

The choice is read while a function is traced, from a `jax.make_user_context` (so it is part of
JAX's tracing and compilation cache keys: a block traced one way is never reused for the other):
inside `hand_written_backward(False)` the layers
trace their plain forms (`jnp.tensordot`, the einsum attention over all key positions), whose
gradients JAX derives; everywhere else (the default) the hand-written passes. The train step
(`cxrtrek_jax.train.step.make_train_step`) sets it from the platform of its mesh's devices
(`hand_written_backward_wins`). Both forms compute the same function; only the program of the
backward pass (and so speed and memory) differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

__all__ = ["HAND_WRITTEN_PLATFORMS", "hand_written_backward", "hand_written_backward_enabled",
           "hand_written_backward_wins"]

# Device platforms (`jax.Device.platform`) where the hand-written backward passes were measured
# faster than autodiff without costing memory.
HAND_WRITTEN_PLATFORMS = ("cpu",)

_ENABLED = jax.make_user_context(default_value=True)


def hand_written_backward_wins(platform: str) -> bool:
    """True when the layers should use their hand-written backward passes on devices of
    `platform` ("cpu", "tpu", "gpu", ...)."""
    return platform in HAND_WRITTEN_PLATFORMS


def hand_written_backward_enabled() -> bool:
    """Whether a layer traced now uses its hand-written backward pass (True unless inside
    `hand_written_backward(False)`)."""
    return bool(_ENABLED.value)


@contextlib.contextmanager
def hand_written_backward(enabled: bool) -> Iterator[None]:
    """Within the block, layers traced use their hand-written backward passes (True) or plain
    forms differentiated by JAX (False)."""
    with _ENABLED(bool(enabled)):
        yield
