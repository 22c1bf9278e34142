"""Building blocks shared by the towers: dense layers (with an optional LoRA
adapter), LayerNorm, RMSNorm, token embedding and activations.

Parameters are float32 and carry logical axis names (see `logical.py`);
computation runs in the `dtype` given to each layer, with norms in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cxrtrek_jax.model.backward_passes import hand_written_backward_enabled

__all__ = ["param", "Dense", "LoraAdapter", "LayerNorm", "RMSNorm", "Embed", "activation", "to_dtype"]

PARAM_DTYPE = jnp.float32


def to_dtype(name: str) -> jnp.dtype:
    """The JAX dtype for a config dtype name ("float32", "bfloat16")."""
    return jnp.dtype(name)


def param(value: jax.Array, names: Sequence[str], kind: type[nnx.Param] = nnx.Param) -> nnx.Param:
    """A parameter with logical axis names; built without a mesh (no eager sharding)."""
    if len(names) != value.ndim:
        raise ValueError(f"{len(names)} axis names {tuple(names)} for a parameter of shape {value.shape}")
    return kind(value, out_sharding=tuple(names), eager_sharding=False)


def activation(name: str):
    """Activation by Hugging Face name: "gelu" (exact, erf), "gelu_pytorch_tanh", or "quick_gelu"
    (CLIP's x * sigmoid(1.702 x))."""
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_pytorch_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {name!r}")


def _contract(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x[..., *in] . kernel[*in, *out] -> [..., *out]."""
    return jnp.tensordot(x, kernel, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [N, I] @ kernel [I, O] -> [N, O], with a backward pass laid out for XLA CPU's GEMMs."""
    return x @ kernel


def _matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, dy):
    """dx = dy kernel^T; dkernel = x^T dy contracts the N rows of both operands, and the GEMM
    then needs one operand transposed: it is given the narrower of x [N, I] and dy [N, O]
    (autodiff's order made XLA transpose dy even when it is the wider one)."""
    x, kernel = residuals
    dx = jax.lax.dot_general(dy, kernel, (((1,), (1,)), ((), ())))
    rows = (((0,), (0,)), ((), ()))
    if x.shape[1] <= dy.shape[1]:
        dkernel = jax.lax.dot_general(x, dy, rows)
    else:
        dkernel = jax.lax.dot_general(dy, x, rows).T
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dense_contract(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """`_contract` as one 2-D product: x [..., *in] -> [prod(...), prod(in)] and kernel
    [*in, *out] -> [prod(in), prod(out)] (free reshapes), result back to [..., *out]; its
    backward pass the hand-written `_matmul_bwd`, or (outside `hand_written_backward`, see
    `backward_passes`) plain `_contract` differentiated by JAX."""
    if not hand_written_backward_enabled():
        return _contract(x, kernel, n_in)
    lead, inner = x.shape[:x.ndim - n_in], kernel.shape[:n_in]
    out = kernel.shape[n_in:]
    flat = _matmul(x.reshape(math.prod(lead), math.prod(inner)), kernel.reshape(math.prod(inner), math.prod(out)))
    return flat.reshape(*lead, *out)


class LoraAdapter(nnx.Module):
    """Low-rank update `dropout(x) @ a @ b * scale` with a [*in, r], b [r, *out].

    `b` starts at zero, so a fresh adapter leaves the layer unchanged.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, in_names: Sequence[str],
                 out_names: Sequence[str], rank: int, scale: float, dropout: float, rngs: nnx.Rngs):
        fan_in = math.prod(in_shape)
        a = jax.random.normal(rngs.params(), (*in_shape, rank), PARAM_DTYPE) / math.sqrt(fan_in)
        self.a = param(a, (*in_names, "lora_rank"), nnx.LoRAParam)
        self.b = param(jnp.zeros((rank, *out_shape), PARAM_DTYPE), ("lora_rank", *out_names), nnx.LoRAParam)
        self.scale = scale
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = self.a.ndim - 1
        low = _contract(self.dropout(x), self.a[...].astype(x.dtype), n_in)
        return _contract(low, self.b[...].astype(x.dtype), 1) * jnp.asarray(self.scale, x.dtype)

    def delta(self) -> jax.Array:
        """The dense update a @ b * scale, shaped like the base kernel (float32)."""
        return _contract(self.a[...], self.b[...], 1) * self.scale


class Dense(nnx.Module):
    """y = x . kernel + bias, contracting the last len(in_shape) axes of x.

    kernel [*in_shape, *out_shape] (axis names in_names + out_names), bias
    [*out_shape]. `lora` holds an optional `LoraAdapter` attached by
    `lora.apply_lora`.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *, in_names: Sequence[str],
                 out_names: Sequence[str], use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.in_names, self.out_names = tuple(in_names), tuple(out_names)
        fan_in = math.prod(self.in_shape)
        kernel = jax.random.normal(rngs.params(), (*self.in_shape, *self.out_shape), PARAM_DTYPE)
        self.kernel = param(kernel / math.sqrt(fan_in), (*self.in_names, *self.out_names))
        self.bias = (param(jnp.zeros(self.out_shape, PARAM_DTYPE), self.out_names) if use_bias
                     else nnx.data(None))
        self.dtype = dtype
        self.lora = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = _dense_contract(x, self.kernel[...].astype(self.dtype), len(self.in_shape))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:
            y = y + self.lora(x)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32; scale/bias [dim] ("embed")."""

    def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype):
        self.scale = param(jnp.ones((dim,), PARAM_DTYPE), ("embed",))
        self.bias = param(jnp.zeros((dim,), PARAM_DTYPE), ("embed",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: x / rms(x) * scale, computed in float32; scale [dim] ("embed")."""

    def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype):
        self.scale = param(jnp.ones((dim,), PARAM_DTYPE), ("embed",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding [vocab, embed]; `attend` gives tied output logits."""

    def __init__(self, vocab_size: int, dim: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        table = jax.random.normal(rngs.params(), (vocab_size, dim), PARAM_DTYPE) * 0.02
        self.embedding = param(table, ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int32[B, L] -> [B, L, embed]."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """[..., embed] -> [..., vocab] with the transposed table."""
        return jnp.einsum("...e,ve->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))
