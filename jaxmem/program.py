"""A configuration made concrete enough to compile and run: the :class:`Program`.

Every task (``train``, ``inference``, ``decode``) builds one from a resolved
:class:`~jaxmem.setup.Setup` (``jaxmem.build``): a jitted step, its arguments as
ShapeDtypeStructs (what a compile needs; nothing allocated), and how to make real arguments for
run mode. The first ``carried_args`` arguments are state that the step returns updated, as its
first outputs, and donates: the training state, or a decode step's KV cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxmem import sharding
from jaxmem.models.workload import Batch, Workload

if TYPE_CHECKING:
    from jaxmem.config import Config
    from jaxmem.setup import Setup


@dataclasses.dataclass(frozen=True)
class Program:
    """One configuration's step, abstractly.

    Attributes:
      setup: the resolved configuration.
      graphdef: the model's static structure.
      params, rest: ShapeDtypeStructs (with shardings) of the parameters and other variables.
      opt_state: ShapeDtypeStructs of the optimizer state (None outside training).
      batch: ShapeDtypeStructs of the step's batch.
      abstract_args: the step's arguments as ShapeDtypeStructs.
      carried_args: how many leading arguments the step returns updated (as its leading
        outputs) and donates, so XLA updates them in place.
      step: the jitted step.
      make_args: ``key -> real arguments`` for run mode (initialised state, synthetic batch).
      objective: ``(params, rest, batch) -> (loss, rest)`` for training, else None.
      init: jitted ``() -> state`` (training: ``(params, rest, opt_state)``).
      cache: decode: ShapeDtypeStructs of the KV cache (None otherwise).
    """

    setup: Setup
    graphdef: nnx.GraphDef
    params: Any
    rest: Any
    opt_state: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    abstract_args: tuple[Any, ...]
    carried_args: int
    step: Any
    make_args: Callable[[jax.Array], tuple[Any, ...]]
    objective: Callable[[Any, Any, Batch], tuple[jax.Array, Any]] | None = None
    init: Any = None
    cache: Any = None

    @property
    def config(self) -> Config:
        return self.setup.config

    @property
    def workload(self) -> Workload:
        return self.setup.workload

    @property
    def mesh(self) -> Mesh:
        return self.setup.mesh

    def sample_batch(self, key: jax.Array) -> dict[str, jax.Array]:
        """A real synthetic batch with this program's fields, placed with their shardings."""
        batch = self.workload.synthetic_batch(key)
        shardings = {k: v.sharding for k, v in self.batch.items()}
        return jax.device_put({k: batch[k] for k in self.batch}, shardings)


def abstract_batch(fields: dict[str, jax.ShapeDtypeStruct], mesh: Mesh) -> dict[str, Any]:
    """ShapeDtypeStructs of batch ``fields`` split over the mesh's batch axes."""
    split = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=split) for k, v in fields.items()}


def no_eager_sharding() -> contextlib.AbstractContextManager:
    """Flax >= 0.12 shards ``nnx.with_partitioning`` variables as they are created, which needs
    a mesh; jaxmem places variables itself, so their axis names stay metadata."""
    use = getattr(nnx, "use_eager_sharding", None)
    return use(False) if use is not None else contextlib.nullcontext()


def abstract_model(workload: Workload, seed: int) -> nnx.Module:
    """The workload's model with ShapeDtypeStructs for arrays (nothing allocated)."""
    with no_eager_sharding():
        return nnx.eval_shape(lambda: workload.init(nnx.Rngs(seed)))


def variable_shardings(setup: Setup, model: nnx.Module, *trees: Any) -> tuple[Any, ...]:
    """NamedShardings for each tree of model variables (``params``, ``rest``) by the setup's
    rules: logical axes from its ``param_axes`` table, or the variables' own metadata."""
    meta = sharding.metadata_axes(nnx.state(model))
    return tuple(sharding.param_shardings(t, setup.mesh, setup.rules, setup.param_axes, meta)
                 for t in trees)
