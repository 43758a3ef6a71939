"""What jaxmem measures: a model to build, the batch it consumes, and its loss.

Built-in models and user factories (``model: {kind: custom, factory: pkg.mod:fn}``) both return
a :class:`Workload`, so the harness has one path for every model.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxmem import losses
  >>> from jaxmem.models import Workload
  >>> w = Workload(
  ...     init=lambda rngs: nnx.Linear(4, 2, rngs=rngs),
  ...     batch={"inputs": jax.ShapeDtypeStruct((8, 4), jnp.float32),
  ...            "targets": jax.ShapeDtypeStruct((8,), jnp.int32)},
  ...     loss=lambda model, b: losses.cross_entropy(model(b["inputs"]), b["targets"]),
  ...     int_maxval={"targets": 2},
  ... )
  >>> sorted(w.synthetic_batch(jax.random.key(0)))
  ['inputs', 'targets']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem import remat

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What an experiment decides about a model besides its shape.

    Attributes:
      batch_size: global batch size.
      remat_policy: the remat policy for each block (``jaxmem.remat``), resolved once.
      remat_every: the policy applies to every k-th block (``jaxmem.models.stack``).
      remat_nested: nested sqrt(L) remat over a scanned stack.
      mlp_keep: fraction of the transformer MLP width kept (structured pruning).
      dtype: compute dtype handed to every layer (``dtype=`` of Flax layers); parameters keep
        their own storage dtype.
    """

    batch_size: int
    remat_policy: remat.RematPolicy = remat.POLICIES["none"]
    remat_every: int = 1
    remat_nested: bool = False
    mlp_keep: float = 1.0
    dtype: Any = jnp.float32


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model constructor, the global batch's shapes, and the loss.

    Attributes:
      init: builds the model from RNG streams; called under ``nnx.eval_shape`` for abstract
        measurement, so it must not depend on concrete values.
      batch: name -> shape and dtype of the global batch (leading dimension = batch).
      loss: ``loss(model, batch) -> scalar``; compute it in float32.
      int_maxval: for integer batch fields, the exclusive upper bound of synthetic values
        (vocabulary size, number of classes). Missing integer fields get zeros.
      predict: ``predict(model, batch) -> outputs`` for forward-only tasks (None: training
        only).
      inputs: the batch fields ``predict`` reads.
    """

    init: Callable[[nnx.Rngs], nnx.Module]
    batch: Mapping[str, jax.ShapeDtypeStruct]
    loss: Callable[[nnx.Module, Batch], jax.Array]
    int_maxval: Mapping[str, int] = dataclasses.field(default_factory=dict)
    predict: Callable[[nnx.Module, Batch], jax.Array] | None = None
    inputs: tuple[str, ...] = ()

    def synthetic_batch(self, key: jax.Array) -> dict[str, jax.Array]:
        """Random arrays of the batch's shapes: normal floats, uniform integers."""
        out: dict[str, Any] = {}
        for i, (name, spec) in enumerate(sorted(self.batch.items())):
            k = jax.random.fold_in(key, i)
            if jnp.issubdtype(spec.dtype, jnp.floating):
                out[name] = jax.random.normal(k, spec.shape, spec.dtype)
            elif name in self.int_maxval:
                out[name] = jax.random.randint(k, spec.shape, 0, self.int_maxval[name], spec.dtype)
            else:
                out[name] = jnp.zeros(spec.shape, spec.dtype)
        return out
