"""The training step of a configuration, and its state, abstract or real.

The state is three pytrees: ``params`` (``nnx.Param`` leaves, in the precision policy's storage
dtype), ``rest`` (any other model variables, e.g. batch statistics) and ``opt_state`` (optax).
The step takes them and a batch, returns the new state and the loss, and donates the old state
so that XLA can update it in place.

Example:
  >>> from jaxmem.config import Config
  >>> from jaxmem.setup import resolve
  >>> from jaxmem.step import build_train_program
  >>> program = build_train_program(resolve(Config()))
  >>> sorted(program.batch), program.carried_args
  (['inputs', 'targets'], 3)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import chex
import jax
import optax
from flax import nnx

from jaxmem import freeze, grads, optim, sharding
from jaxmem.loss_scale import DynamicLossScale, all_finite, select
from jaxmem.models.workload import Batch
from jaxmem.precision import PrecisionPolicy
from jaxmem.program import Program, abstract_batch, no_eager_sharding, variable_shardings

if TYPE_CHECKING:
    from jaxmem.setup import Setup

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
        chex.assert_shape(loss, ())  # the model's loss is one number
        # gradients in the parameters' shapes and storage dtype (the precision policy's cast)
        chex.assert_trees_all_equal_shapes_and_dtypes(g, params)
        updates, new_tx_state = tx.update(g, tx_state, params)
        new_params = optax.apply_updates(params, updates)
        if loss_scale is None:
            return new_params, new_rest, new_tx_state, loss
        finite = all_finite(g)
        new_params, new_rest, new_tx_state = select(
            finite, (new_params, new_rest, new_tx_state), (params, rest, tx_state))
        return new_params, new_rest, (new_tx_state, loss_scale.adjust(ls_state, finite)), loss

    return train_step


def build_train_program(setup: Setup) -> Program:
    """Everything needed to compile (and run) the setup's training step; allocates nothing.

    Raises:
      ConfigError: the configuration cannot be built (bad factory, freeze pattern, mesh).
      Unsupported: the target cannot do what the configuration asks (host offload).
    """
    config, mesh, policy, workload = setup.config, setup.mesh, setup.precision, setup.workload
    seed = config.data.seed
    loss_scale = DynamicLossScale() if policy.loss_scaling else None
    if setup.remat.offloads:
        sharding.require_host_memory(mesh, f"remat policy {setup.remat.name}")

    model = setup.abstract_model
    graphdef, abstract_params, _ = nnx.split(model, nnx.Param, ...)
    frozen = None
    tx = optim.build(config.optimizer)
    if setup.freeze_patterns:
        frozen = freeze.frozen_mask(abstract_params, setup.freeze_patterns)
        tx = freeze.freeze_tx(tx, frozen)

    def init_state() -> State:
        with no_eager_sharding():
            model = workload.init(nnx.Rngs(seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params = policy.cast_to_param(params)
        opt_state = tx.init(params)
        return params, rest, (opt_state if loss_scale is None else (opt_state, loss_scale.init()))

    params, rest, opt_state = jax.eval_shape(init_state)
    rules = setup.rules
    param_sh, rest_sh = variable_shardings(setup, model, params, rest)
    opt_sh = sharding.state_shardings(opt_state, params, param_sh, mesh, rules)
    to_device = None
    if config.optimizer.offload:
        to_device = functools.partial(jax.device_put, device=opt_sh)
        opt_sh = sharding.host_memory(mesh, opt_sh)
    state_shardings = (param_sh, rest_sh, opt_sh)
    params, rest, opt_state = (sharding.place(tree, s) for tree, s in
                               zip((params, rest, opt_state), state_shardings, strict=True))
    batch = abstract_batch(dict(workload.batch), mesh)
    batch_shardings = {k: v.sharding for k, v in batch.items()}
    objective = make_objective(graphdef, workload.loss, policy, frozen)
    train_step = make_train_step(objective, tx, microbatches=config.data.microbatches,
                                 loss_scale=loss_scale,
                                 constrain_batch=sharding.constrain_batch(mesh),
                                 opt_state_to_device=to_device)
    step = jax.jit(
        sharding.with_rules(train_step, mesh, rules),
        in_shardings=(*state_shardings, batch_shardings),
        out_shardings=(*state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0, 1, 2),
    )
    init = jax.jit(init_state, out_shardings=state_shardings)
    program: Program

    def make_args(key: jax.Array) -> tuple[Any, ...]:
        return (*init(), program.sample_batch(key))

    program = Program(setup=setup, graphdef=graphdef, params=params, rest=rest,
                      opt_state=opt_state, batch=batch,
                      abstract_args=(params, rest, opt_state, batch), carried_args=3, step=step,
                      make_args=make_args, objective=objective, init=init)
    return program
