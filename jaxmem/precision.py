"""Precision policies: the dtype parameters are stored in and the dtype the model computes in.

A policy casts the stored parameters and floating inputs to the compute dtype inside the loss, so
it works for any NNX model without touching its code; gradients come back in the storage dtype
(the cast's transpose). Losses are computed in float32 by jaxmem's loss functions.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import precision
  >>> p = precision.get("bf16-mixed")
  >>> p.cast_to_compute({"w": jnp.ones(2)})["w"].dtype
  dtype(bfloat16)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxmem.errors import ConfigError


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Floating leaves (arrays or ShapeDtypeStructs) of ``tree`` in ``dtype``; others as they
    are."""

    def cast(x: Any) -> Any:
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jnp.issubdtype(x.dtype,
                                                                               jnp.floating):
            if isinstance(x, jax.ShapeDtypeStruct):
                return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """Where parameters live and how the model computes.

    Attributes:
      name: registry name.
      param_dtype: dtype of the stored (master) parameters and of the gradients.
      compute_dtype: dtype parameters and floating inputs are cast to for the forward pass.
      doc: one line for tables.
      loss_scaling: scale the loss dynamically (``jaxmem.loss_scale``), for float16 compute.
    """

    name: str
    param_dtype: Any
    compute_dtype: Any
    doc: str
    loss_scaling: bool = False

    def cast_to_param(self, tree: Any) -> Any:
        """Floating leaves (arrays or ShapeDtypeStructs) in the parameter dtype."""
        return cast_floats(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Floating leaves in the compute dtype (integer leaves, e.g. token ids, untouched)."""
        return cast_floats(tree, self.compute_dtype)


POLICIES: dict[str, PrecisionPolicy] = {
    p.name: p
    for p in [
        PrecisionPolicy("fp32", jnp.float32, jnp.float32, "float32 parameters and compute"),
        PrecisionPolicy(
            "bf16-mixed", jnp.float32, jnp.bfloat16, "float32 master parameters, bfloat16 compute"
        ),
        PrecisionPolicy("bf16", jnp.bfloat16, jnp.bfloat16,
                        "bfloat16 parameters and compute (optimizer state follows parameters)"),
        PrecisionPolicy("fp16-mixed", jnp.float32, jnp.float16,
                        "float32 master parameters, float16 compute, dynamic loss scaling",
                        loss_scaling=True),
    ]
}


def get(name: str) -> PrecisionPolicy:
    """The policy called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError("precision.policy", "unknown precision policy", value=name,
                          choices=sorted(POLICIES)) from None
