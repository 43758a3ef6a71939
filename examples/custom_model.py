"""Bring your own model: a factory that jaxmem measures with the same harness.

    jaxmem run experiments/custom_model.yaml

The factory returns a ``jaxmem.Workload``: how to build the NNX model, the shapes of one global
batch, and the loss. Accepting ``remat_policy`` and ``dtype`` is optional; accept them to let
the experiment's remat and precision settings reach your layers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import jaxmem
from jaxmem import losses


class ResidualMLP(nnx.Module):
    """Residual blocks of Linear -> BatchNorm -> GELU (BatchNorm keeps running statistics)."""

    def __init__(self, width: int, depth: int, classes: int, *, remat_policy: str, dtype: Any,
                 rngs: nnx.Rngs):
        self.blocks = nnx.List([
            nnx.Sequential(
                nnx.Linear(width, width, dtype=dtype, rngs=rngs),
                nnx.BatchNorm(width, dtype=dtype, rngs=rngs),
            )
            for _ in range(depth)
        ])
        self.head = nnx.Linear(width, classes, dtype=dtype, rngs=rngs)
        self.remat_policy = remat_policy

    def __call__(self, x_BxW: jax.Array) -> jax.Array:
        block_fn = jaxmem.remat.apply(lambda block, x: x + jax.nn.gelu(block(x)),
                                      self.remat_policy)
        for block in self.blocks:
            x_BxW = block_fn(block, x_BxW)
        return self.head(x_BxW)


def workload(batch_size: int, width: int = 256, depth: int = 4, classes: int = 10,
             remat_policy: str = "none", dtype: Any = jnp.float32) -> jaxmem.Workload:
    """Classification of random ``width``-dimensional vectors."""

    def loss(model: ResidualMLP, batch: jaxmem.models.Batch) -> jax.Array:
        return losses.cross_entropy(model(batch["x"]), batch["y"])

    return jaxmem.Workload(
        init=lambda rngs: ResidualMLP(width, depth, classes, remat_policy=remat_policy,
                                      dtype=dtype, rngs=rngs),
        batch={"x": jax.ShapeDtypeStruct((batch_size, width), jnp.float32),
               "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32)},
        loss=loss,
        int_maxval={"y": classes},
    )
