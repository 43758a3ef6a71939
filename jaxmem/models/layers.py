"""Layers whose backward keeps only what the textbook count of activations has.

Flax's LayerNorm computes its statistics in float32 and lets autodiff keep float32 copies of
the normalised input; with bf16 compute that doubles its share of the activations. This
LayerNorm keeps its input (in the compute dtype) and two float32 scalars per row, and redoes the
float32 arithmetic in the backward. Values and gradients match ``nnx.LayerNorm``.

Autodiff of the tanh GELU keeps every intermediate of the formula (the tanh, its products, ...):
about six tensors of the MLP's width. :func:`gelu` keeps its input only (its output is kept by
the next matmul anyway) and recomputes the derivative in the backward. :func:`swiglu` likewise
keeps its two inputs only, and :func:`rms_norm` its input and one float32 scalar per row.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis, stats in float32."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _stats(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(var + eps)


def _row(v: jax.Array, ndim: int) -> jax.Array:
    """A feature vector shaped to broadcast over ``ndim``-dimensional inputs, in float32."""
    return v.astype(jnp.float32).reshape((1,) * (ndim - 1) + v.shape)


def _layer_norm_fwd(x, scale, bias, eps):
    mean, rstd = _stats(x, eps)
    y = (x.astype(jnp.float32) - mean) * rstd
    out = (y * _row(scale, x.ndim) + _row(bias, x.ndim)).astype(x.dtype)
    return out, (x, scale, mean, rstd, jnp.zeros((), bias.dtype))


def _layer_norm_bwd(eps, res, g):
    del eps
    x, scale, mean, rstd, bias_like = res
    y = (x.astype(jnp.float32) - mean) * rstd
    g32 = g.astype(jnp.float32)
    reduce_axes = tuple(range(g.ndim - 1))
    d_scale = jnp.sum(g32 * y, axis=reduce_axes).astype(scale.dtype)
    d_bias = jnp.sum(g32, axis=reduce_axes).astype(bias_like.dtype)
    gy = g32 * _row(scale, g.ndim)
    dx = rstd * (gy - jnp.mean(gy, axis=-1, keepdims=True)
                 - y * jnp.mean(gy * y, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """``jax.nn.gelu`` (tanh approximation) that keeps only its input for the backward."""
    return jax.nn.gelu(x)


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu(x), x


def _gelu_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    _, vjp = jax.vjp(jax.nn.gelu, x.astype(jnp.float32))
    return (vjp(g.astype(jnp.float32))[0].astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis, statistics in float32."""
    return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x, scale, eps):
    x32 = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * rstd * _row(scale, x.ndim)).astype(x.dtype), (x, scale, rstd)


def _rms_norm_bwd(eps, res, g):
    del eps
    x, scale, rstd = res
    y = x.astype(jnp.float32) * rstd
    g32 = g.astype(jnp.float32)
    d_scale = jnp.sum(g32 * y, axis=tuple(range(g.ndim - 1))).astype(scale.dtype)
    gy = g32 * _row(scale, g.ndim)
    dx = rstd * (gy - y * jnp.mean(gy * y, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    g32 = gate.astype(jnp.float32)
    return (jax.nn.silu(g32) * up.astype(jnp.float32)).astype(gate.dtype)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``silu(gate) * up`` (the gated MLP of Llama), keeping only its two inputs."""
    return _swiglu(gate, up)


def _swiglu_fwd(gate: jax.Array, up: jax.Array):
    return _swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, g):
    gate, up = res
    g32, u32, grad = gate.astype(jnp.float32), up.astype(jnp.float32), g.astype(jnp.float32)
    sig = jax.nn.sigmoid(g32)
    d_up = grad * g32 * sig
    d_gate = grad * u32 * sig * (1 + g32 * (1 - sig))  # d silu(x) = s (1 + x (1 - s))
    return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def dense(x: jax.Array, w: jax.Array, bias: jax.Array | None, dtype: Any) -> jax.Array:
    """``x @ w + bias`` in ``dtype``, the bias broadcast explicitly over leading axes."""
    y = x.astype(dtype) @ w.astype(dtype)
    if bias is None:
        return y
    return y + bias.astype(dtype).reshape((1,) * (y.ndim - 1) + bias.shape)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with a learned scale and bias, computing in ``dtype``."""

    def __init__(self, features: int, *, dtype: Any = None, epsilon: float = 1e-6,
                 rngs: nnx.Rngs | None = None):
        del rngs  # deterministic initialisation; the argument keeps Flax's signature
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.dtype = dtype
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned scale (Llama), computing in ``dtype``."""

    def __init__(self, features: int, *, dtype: Any = None, epsilon: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.dtype = dtype
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return rms_norm(x, self.scale[...], self.epsilon)
