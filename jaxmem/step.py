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
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxmem import analytic, freeze, grads, optim, precision, remat, sharding, targets
from jaxmem.config import Config
from jaxmem.models.workload import Batch, BuildOptions, Workload
from jaxmem.loss_scale import DynamicLossScale, all_finite, select
from jaxmem.precision import PrecisionPolicy

State = tuple[Any, Any, Any]  # (params, rest, opt_state)


def make_objective(
    graphdef: nnx.GraphDef,
    loss_fn: Callable[[nnx.Module, Batch], jax.Array],
    policy: PrecisionPolicy,
    frozen: Any = None,
) -> Callable[[Any, Any, Batch], tuple[jax.Array, Any]]:
    """``objective(params, rest, batch) -> (loss, new_rest)``, the function differentiated.

    Parameters and floating batch fields are cast to the policy's compute dtype inside, so
    gradients arrive in the storage dtype. ``frozen`` (a mask like the parameters) puts frozen
    parameters behind ``stop_gradient``.
    """

    def objective(params: Any, rest: Any, batch: Batch) -> tuple[jax.Array, Any]:
        if frozen is not None:
            params = freeze.stop_frozen(params, frozen)
        # copy=True: variables created at this trace level, so layers may update their own
        # state (BatchNorm statistics) under jax.grad
        model = nnx.merge(graphdef, policy.cast_to_compute(params), rest, copy=True)
        loss = loss_fn(model, policy.cast_to_compute(batch))
        return loss, nnx.state(model, nnx.Not(nnx.Param))

    return objective


def make_train_step(
    objective: Callable[[Any, Any, Batch], tuple[jax.Array, Any]],
    tx: optax.GradientTransformation,
    *,
    microbatches: int = 1,
    loss_scale: DynamicLossScale | None = None,
    constrain_batch: Callable[[Any], Any] | None = None,
    opt_state_to_device: Callable[[Any], Any] | None = None,
) -> Callable[..., tuple[Any, Any, Any, jax.Array]]:
    """``step(params, rest, opt_state, batch) -> (params, rest, opt_state, loss)``.

    Args:
      microbatches: accumulate gradients over this many microbatches (``jaxmem.grads``).
      loss_scale: dynamic loss scaling; ``opt_state`` is then ``(optax_state, LossScaleState)``
        and a step whose gradients are not finite changes nothing but the scale.
      constrain_batch: sharding constraint for each microbatch.
      opt_state_to_device: moves an offloaded optimizer state into device memory.
    """

    def train_step(params: Any, rest: Any, opt_state: Any, batch: Batch):
        if opt_state_to_device is not None:
            opt_state = opt_state_to_device(opt_state)
        tx_state, ls_state = opt_state if loss_scale else (opt_state, None)
        scale = None if ls_state is None else ls_state.scale
        if microbatches > 1:
            loss, new_rest, g = grads.accumulated(objective, params, rest, batch, microbatches,
                                                  scale, constrain_batch)
        else:
            loss, new_rest, g = grads.value_and_grad(objective, params, rest, batch, scale)
        updates, new_tx_state = tx.update(g, tx_state, params)
        new_params = optax.apply_updates(params, updates)
        if loss_scale is None:
            return new_params, new_rest, new_tx_state, loss
        finite = all_finite(g)
        new_params, new_rest, new_tx_state = select(
            finite, (new_params, new_rest, new_tx_state), (params, rest, tx_state))
        return new_params, new_rest, (new_tx_state, loss_scale.adjust(ls_state, finite)), loss

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

    def saved_residuals(self) -> list[analytic.Residual] | None:
        """What the forward pass keeps for the parameter gradients, from the jaxpr (the rest
        of the state and the batch get no gradient)."""
        return analytic.saved_residuals(
            lambda p, r, b: self.objective(p, jax.lax.stop_gradient(r),
                                           jax.lax.stop_gradient(b))[0],
            self.params, self.rest, self.batch,
        )

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
        remat_every=config.remat.every,
        remat_nested=config.remat.nested,
        dtype=precision.get(config.precision.policy).compute_dtype,
    ))


def build_program(config: Config, devices: Sequence[jax.Device] | None = None) -> Program:
    """Everything needed to compile (and run) ``config``'s training step; allocates nothing.

    Raises:
      ConfigError: the configuration cannot be built (bad factory, freeze pattern, mesh).
      Unsupported: the target cannot do what the configuration asks (host offload).
    """
    if devices is None:
        devices = targets.get(config.target.name).devices()
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(config.data.batch_size // config.data.microbatches, mesh)
    policy = precision.get(config.precision.policy)
    workload = build_workload(config)
    seed = config.data.seed
    loss_scale = DynamicLossScale() if policy.loss_scaling else None
    config.model.check_platform(mesh.devices.flat[0].platform)
    if remat.get(config.remat.policy).offloads:
        sharding.require_host_memory(mesh, f"remat policy {config.remat.policy}")

    abstract_model = nnx.eval_shape(lambda: workload.init(nnx.Rngs(seed)))
    graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
    frozen = None
    tx = optim.build(config.optimizer)
    patterns = (*config.freeze.patterns,
                *config.model.freeze_patterns(config.freeze.blocks, config.freeze.embeddings))
    if patterns:
        frozen = freeze.frozen_mask(abstract_params, patterns)
        tx = freeze.freeze_tx(tx, frozen)

    def init_state() -> State:
        model = workload.init(nnx.Rngs(seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params = policy.cast_to_param(params)
        opt_state = tx.init(params)
        return params, rest, (opt_state if loss_scale is None else (opt_state, loss_scale.init()))

    params, rest, opt_state = jax.eval_shape(init_state)

    replicated = sharding.replicated(mesh)
    opt_sharding = replicated
    to_device = None
    if config.optimizer.offload:
        opt_sharding = sharding.host_memory(mesh, replicated)
        opt_device = jax.tree.map(lambda _: replicated, opt_state)
        to_device = functools.partial(jax.device_put, device=opt_device)
    state_shardings = (jax.tree.map(lambda _: replicated, params),
                       jax.tree.map(lambda _: replicated, rest),
                       jax.tree.map(lambda _: opt_sharding, opt_state))
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in workload.batch}
    params, rest, opt_state = (sharding.place(tree, s) for tree, s in
                               zip((params, rest, opt_state),
                                   (replicated, replicated, opt_sharding), strict=True))
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
        for k, v in workload.batch.items()
    }
    objective = make_objective(graphdef, workload.loss, policy, frozen)
    step = jax.jit(
        make_train_step(objective, tx, microbatches=config.data.microbatches,
                        loss_scale=loss_scale, constrain_batch=sharding.constrain_batch(mesh),
                        opt_state_to_device=to_device),
        in_shardings=(*state_shardings, batch_shardings),
        out_shardings=(*state_shardings, replicated),
        donate_argnums=(0, 1, 2),
    )
    init = jax.jit(init_state, out_shardings=state_shardings)
    return Program(config=config, workload=workload, mesh=mesh, graphdef=graphdef, params=params,
                   rest=rest, opt_state=opt_state, batch=batch, objective=objective, step=step,
                   init=init)
