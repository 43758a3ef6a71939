"""The training step of a configuration, and its state, abstract or real.

The state is three pytrees: ``params`` (``nnx.Param`` leaves, in the precision policy's storage
dtype), ``rest`` (any other model variables, e.g. batch statistics) and ``opt_state`` (optax).
The step takes them and a batch, returns the new state and the loss, and donates the old state
so that XLA can update it in place.

Example:
  >>> from jaxmem.config import Config
  >>> from jaxmem.step import build_program
  >>> program = build_program(Config())
  >>> sorted(program.batch)
  ['inputs', 'targets']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxmem import optim, precision, sharding, targets
from jaxmem.config import Config
from jaxmem.models.workload import Batch, BuildOptions, Workload
from jaxmem.precision import PrecisionPolicy

State = tuple[Any, Any, Any]  # (params, rest, opt_state)


def make_objective(
    graphdef: nnx.GraphDef,
    loss_fn: Callable[[nnx.Module, Batch], jax.Array],
    policy: PrecisionPolicy,
) -> Callable[[Any, Any, Batch], tuple[jax.Array, Any]]:
    """``objective(params, rest, batch) -> (loss, new_rest)``, the function differentiated.

    Parameters and floating batch fields are cast to the policy's compute dtype inside, so
    gradients arrive in the storage dtype.
    """

    def objective(params: Any, rest: Any, batch: Batch) -> tuple[jax.Array, Any]:
        # copy=True: variables created at this trace level, so layers may update their own
        # state (BatchNorm statistics) under jax.grad
        model = nnx.merge(graphdef, policy.cast_to_compute(params), rest, copy=True)
        loss = loss_fn(model, policy.cast_to_compute(batch))
        return loss, nnx.state(model, nnx.Not(nnx.Param))

    return objective


def make_train_step(
    objective: Callable[[Any, Any, Batch], tuple[jax.Array, Any]],
    tx: optax.GradientTransformation,
) -> Callable[..., tuple[Any, Any, Any, jax.Array]]:
    """``step(params, rest, opt_state, batch) -> (params, rest, opt_state, loss)``."""

    def train_step(params: Any, rest: Any, opt_state: Any, batch: Batch):
        (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(params, rest, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, rest, opt_state, loss

    return train_step


@dataclasses.dataclass(frozen=True)
class Program:
    """A configuration made concrete enough to compile: model structure, shapes, shardings.

    Attributes:
      config: the configuration.
      workload: the model's constructor, batch shapes and loss.
      mesh: the device mesh.
      graphdef: the model's static structure.
      params, rest, opt_state: ShapeDtypeStructs (with shardings) of the training state.
      batch: ShapeDtypeStructs (with shardings) of one global batch.
      objective: ``(params, rest, batch) -> (loss, rest)``, what the step differentiates.
      step: the jitted training step (state donated).
      init: jitted ``() -> (params, rest, opt_state)`` creating real arrays (run mode).
    """

    config: Config
    workload: Workload
    mesh: Mesh
    graphdef: nnx.GraphDef
    params: Any
    rest: Any
    opt_state: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    objective: Callable[[Any, Any, Batch], tuple[jax.Array, Any]]
    step: Any
    init: Any

    @property
    def abstract_args(self) -> tuple[Any, Any, Any, dict[str, jax.ShapeDtypeStruct]]:
        """The step's arguments as ShapeDtypeStructs: what a compile needs, nothing allocated."""
        return self.params, self.rest, self.opt_state, self.batch

    def sample_batch(self, key: jax.Array) -> dict[str, jax.Array]:
        """A real synthetic batch, placed with the batch sharding."""
        batch = self.workload.synthetic_batch(key)
        shardings = {k: v.sharding for k, v in self.batch.items()}
        return jax.device_put(batch, shardings)


def build_workload(config: Config) -> Workload:
    """The model constructor, batch shapes and loss that ``config`` describes (cheap: nothing is
    traced); raises ConfigError for a model that cannot be built (e.g. a bad factory)."""
    return config.model.build(BuildOptions(
        batch_size=config.data.batch_size,
        remat_policy=config.remat.policy,
        dtype=precision.get(config.precision.policy).compute_dtype,
    ))


def build_program(config: Config, devices: Sequence[jax.Device] | None = None) -> Program:
    """Everything needed to compile (and run) ``config``'s training step; allocates nothing."""
    if devices is None:
        devices = targets.get(config.target.name).devices()
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(config.data.batch_size, mesh)
    policy = precision.get(config.precision.policy)
    workload = build_workload(config)
    tx = optim.build(config.optimizer)
    seed = config.data.seed

    def init_state() -> State:
        model = workload.init(nnx.Rngs(seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params = policy.cast_to_param(params)
        return params, rest, tx.init(params)

    abstract_model = nnx.eval_shape(lambda: workload.init(nnx.Rngs(seed)))
    graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
    params, rest, opt_state = jax.eval_shape(init_state)

    replicated = sharding.replicated(mesh)
    state_shardings = jax.tree.map(lambda _: replicated, (params, rest, opt_state))
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in workload.batch}
    params, rest, opt_state = (
        sharding.place(tree, replicated) for tree in (params, rest, opt_state)
    )
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
        for k, v in workload.batch.items()
    }
    objective = make_objective(graphdef, workload.loss, policy)
    step = jax.jit(
        make_train_step(objective, tx),
        in_shardings=(*state_shardings, batch_shardings),
        out_shardings=(*state_shardings, replicated),
        donate_argnums=(0, 1, 2),
    )
    init = jax.jit(init_state, out_shardings=state_shardings)
    return Program(config=config, workload=workload, mesh=mesh, graphdef=graphdef, params=params,
                   rest=rest, opt_state=opt_state, batch=batch, objective=objective, step=step,
                   init=init)

