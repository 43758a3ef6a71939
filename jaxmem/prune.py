"""Pruning the transformer MLPs, two ways, to show which one saves memory.

* ``masked``: each MLP weight gets a magnitude mask (the smallest ``fraction`` zeroed). The
  weights keep their shape and the mask is stored beside them: sparsity without a saving.
* ``structured``: the MLPs are built narrower (``BuildOptions.mlp_keep``): the pruned rows and
  columns are gone, and so are their bytes.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx

from jaxmem.models.layers import dense
  >>> from jaxmem.prune import MaskedLinear
  >>> layer = MaskedLinear.from_linear(nnx.Linear(16, 16, rngs=nnx.Rngs(0)), fraction=0.75)
  >>> float(layer.mask[...].mean())
  0.25
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem.models.layers import dense


class PruneMask(nnx.Variable):
    """A fixed pruning mask (model state, not a parameter)."""


def magnitude_mask(w: jax.Array, fraction: float) -> jax.Array:
    """True for weights at or above the ``fraction`` quantile of ``|w|`` (per matrix: the last
    two axes, so each layer of a scanned stack gets its own threshold)."""
    threshold = jnp.quantile(jnp.abs(w.astype(jnp.float32)), fraction, axis=(-2, -1),
                             keepdims=True)
    return jnp.abs(w.astype(jnp.float32)) >= threshold


class MaskedLinear(nnx.Module):
    """``x @ (kernel * mask) + bias``."""

    def __init__(self, kernel: jax.Array, bias: jax.Array | None, mask: jax.Array, dtype: Any):
        self.kernel = nnx.Param(kernel)
        self.bias = None if bias is None else nnx.Param(bias)
        self.mask = PruneMask(mask)
        self.dtype = dtype

    @classmethod
    def from_linear(cls, layer: nnx.Linear, fraction: float) -> MaskedLinear:
        kernel = layer.kernel[...]
        bias = None if layer.bias is None else layer.bias[...]
        return cls(kernel, bias, magnitude_mask(kernel, fraction), layer.dtype or kernel.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...].astype(self.dtype) * self.mask[...].astype(self.dtype)
        return dense(x, w, None if self.bias is None else self.bias[...], self.dtype)


def mask_mlps(model: nnx.Module, fraction: float) -> int:
    """Masks the up and down projections of every transformer MLP in ``model`` (in place);
    returns how many MLPs were masked."""
    from jaxmem.models.transformer import MLP

    mlps = [node for _, node in nnx.iter_graph(model) if isinstance(node, MLP)]
    for mlp in mlps:
        mlp.up = MaskedLinear.from_linear(mlp.up, fraction)
        mlp.down = MaskedLinear.from_linear(mlp.down, fraction)
    return len(mlps)
