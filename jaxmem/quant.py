"""Weight-only int8 quantisation with per-channel scales, dequantised on the fly.

Each ``nnx.Linear`` kernel becomes int8 with one float32 scale per output channel (per layer of a
scanned stack), each ``nnx.Embed`` table int8 with one scale per row. Layers dequantise to their
compute dtype inside their own call, so a full-precision copy of a weight exists only while its
layer runs. Biases and norms stay as they are.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxmem import quant
  >>> layer = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
  >>> q = quant.QuantizedLinear.from_linear(layer)
  >>> q.kernel_q[...].dtype, q.scale[...].shape
  (dtype('int8'), (1, 32))
  >>> x = jnp.ones((2, 64))
  >>> bool(jnp.allclose(q(x), layer(x), atol=0.05))
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem.models.layers import dense
from jaxmem.models.surgery import replace_modules


def quantize_int8(w: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 over ``axis`` (the reduced one): ``w ~= q * scale``."""
    amax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -127, 127).astype(jnp.int8)
    return q, scale.astype(jnp.float32)


class QuantizedLinear(nnx.Module):
    """``x @ (kernel_q * scale) + bias`` with an int8 kernel and per-output-channel scales."""

    def __init__(self, kernel_q: jax.Array, scale: jax.Array, bias: jax.Array | None,
                 dtype: Any):
        self.kernel_q = nnx.Param(kernel_q)
        self.scale = nnx.Param(scale)
        self.bias = None if bias is None else nnx.Param(bias)
        self.dtype = dtype

    @classmethod
    def from_linear(cls, layer: nnx.Linear) -> QuantizedLinear:
        kernel = layer.kernel[...]
        q, scale = quantize_int8(kernel, axis=-2)  # one scale per output channel
        bias = None if layer.bias is None else layer.bias[...]
        return cls(q, scale, bias, layer.dtype or kernel.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel_q[...].astype(self.dtype) * self.scale[...].astype(self.dtype)
        return dense(x, w, None if self.bias is None else self.bias[...], self.dtype)


class QuantizedEmbed(nnx.Module):
    """An embedding table in int8 with one scale per row; ``attend`` for tied heads."""

    def __init__(self, table_q: jax.Array, scale: jax.Array, dtype: Any):
        self.table_q = nnx.Param(table_q)
        self.scale = nnx.Param(scale)
        self.dtype = dtype

    @classmethod
    def from_embed(cls, embed: nnx.Embed) -> QuantizedEmbed:
        table = embed.embedding[...]
        q, scale = quantize_int8(table, axis=-1)  # one scale per row (token)
        return cls(q, scale, embed.dtype or table.dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.table_q[...], ids, axis=0).astype(self.dtype)
        return rows * jnp.take(self.scale[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        table = self.table_q[...].astype(self.dtype) * self.scale[...].astype(self.dtype)
        return x.astype(self.dtype) @ table.T


def quantize(model: nnx.Module) -> nnx.Module:
    """``model`` with every Linear and Embed replaced by its int8 version (in place)."""
    replace_modules(model, nnx.Linear, lambda m, _: QuantizedLinear.from_linear(m))
    replace_modules(model, nnx.Embed, lambda m, _: QuantizedEmbed.from_embed(m))
    return model
