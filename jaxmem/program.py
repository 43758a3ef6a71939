"""A configuration made concrete enough to compile and run: the :class:`Program`.

Every task (``train``, ``inference``, ``decode``) builds one: a jitted step, its arguments as
ShapeDtypeStructs (what a compile needs; nothing allocated), and how to make real arguments for
run mode. The first ``carry`` arguments are state the step replaces (and donates): the
training state, or a decode step's KV cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxmem import analytic, precision, sharding, targets
from jaxmem.config import Config
from jaxmem.models.workload import Batch, BuildOptions, Workload


@dataclasses.dataclass(frozen=True)
class Program:
    """One configuration's compiled step, abstractly.

    Attributes:
      config: the configuration.
      workload: the model's constructor, batch shapes and loss.
      mesh: the device mesh.
      graphdef: the model's static structure.
      params, rest: ShapeDtypeStructs (with shardings) of the parameters and other variables.
      opt_state: ShapeDtypeStructs of the optimizer state (None outside training).
      batch: ShapeDtypeStructs of the step's batch.
      abstract_args: the step's arguments as ShapeDtypeStructs.
      carry: how many leading arguments the step's leading outputs replace (donated).
      step: the jitted step.
      make_args: ``key -> real arguments`` for run mode (initialised state, synthetic batch).
      objective: ``(params, rest, batch) -> (loss, rest)`` for training, else None.
      init: jitted ``() -> state`` (training: ``(params, rest, opt_state)``).
      analytic: extra shape-derived figures of the task (e.g. ``kv_cache_bytes``).
    """

    config: Config
    workload: Workload
    mesh: Mesh
    graphdef: nnx.GraphDef
    params: Any
    rest: Any
    opt_state: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    abstract_args: tuple[Any, ...]
    carry: int
    step: Any
    make_args: Callable[[jax.Array], tuple[Any, ...]]
    objective: Callable[[Any, Any, Batch], tuple[jax.Array, Any]] | None = None
    init: Any = None
    analytic: dict[str, Any] = dataclasses.field(default_factory=dict)

    def saved_residuals(self) -> list[analytic.Residual] | None:
        """What the forward pass keeps for the parameter gradients, from the jaxpr (the rest
        of the state and the batch get no gradient), for one microbatch when gradients are
        accumulated; None without a backward pass."""
        if self.objective is None:
            return None
        objective = self.objective
        k = self.config.data.microbatches  # accumulation keeps one microbatch's at a time
        batch = {name: jax.ShapeDtypeStruct((s.shape[0] // k, *s.shape[1:]), s.dtype)
                 for name, s in self.batch.items()}
        return analytic.saved_residuals(
            lambda p, r, b: objective(p, jax.lax.stop_gradient(r),
                                      jax.lax.stop_gradient(b))[0],
            self.params, self.rest, batch,
        )

    def sample_batch(self, key: jax.Array) -> dict[str, jax.Array]:
        """A real synthetic batch with this program's fields, placed with their shardings."""
        batch = self.workload.synthetic_batch(key)
        shardings = {k: v.sharding for k, v in self.batch.items()}
        return jax.device_put({k: batch[k] for k in self.batch}, shardings)


def build_workload(config: Config) -> Workload:
    """The model constructor, batch shapes and loss that ``config`` describes (cheap: nothing is
    traced); raises ConfigError for a model that cannot be built (e.g. a bad factory)."""
    return config.model.build(BuildOptions(
        batch_size=config.data.batch_size,
        remat_policy=config.remat.policy,
        remat_every=config.remat.every,
        remat_nested=config.remat.nested,
        dtype=precision.get(config.precision.policy).compute_dtype,
        mlp_keep=config.inference.mlp_keep(config.task),
    ))


def make_mesh(config: Config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The configuration's mesh over ``devices`` (default: the target's), batch checked; the
    model is checked against the platform."""
    if devices is None:
        devices = targets.get(config.target.name).devices()
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(config.data.batch_size // config.data.microbatches, mesh)
    config.model.check_platform(mesh.devices.flat[0].platform)
    config.model.check_sharding(dict(mesh.shape), config.sharding.build_rules())
    return mesh


def batch_specs(fields: dict[str, jax.ShapeDtypeStruct], mesh: Mesh) -> dict[str, Any]:
    """ShapeDtypeStructs of batch ``fields`` split over the mesh's batch axes."""
    spec = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in fields.items()}


def no_eager_sharding() -> contextlib.AbstractContextManager:
    """Flax >= 0.12 shards ``nnx.with_partitioning`` variables as they are created, which needs
    a mesh; jaxmem places variables itself, so their axis names stay metadata."""
    use = getattr(nnx, "use_eager_sharding", None)
    return use(False) if use is not None else contextlib.nullcontext()


def abstract_model(workload: Workload, seed: int) -> nnx.Module:
    """The workload's model with ShapeDtypeStructs for arrays (nothing allocated)."""
    with no_eager_sharding():
        return nnx.eval_shape(lambda: workload.init(nnx.Rngs(seed)))


def variable_shardings(config: Config, mesh: Mesh, model: nnx.Module, *trees: Any
                       ) -> tuple[Any, ...]:
    """NamedShardings for each tree of model variables (``params``, ``rest``) by the
    configuration's sharding rules: logical axes from ``sharding.param_axes``, the model's
    ``PARAM_AXES`` table, or the variables' own metadata."""
    rules = config.sharding.build_rules()
    table = (*config.sharding.axes_table(), *config.model.PARAM_AXES)
    meta = sharding.metadata_axes(nnx.state(model))
    return tuple(sharding.param_specs(t, mesh, rules, table, meta) for t in trees)
