"""Forward-only tasks: ``inference`` (a forward pass over a batch) and ``decode`` (one
autoregressive step of a GPT over a KV cache of ``context`` positions).

Weights are stored as ``inference.weights`` says (float32, bfloat16, or int8 with per-channel
scales: ``jaxmem.quant``), optionally pruned (``jaxmem.prune``). No optimizer state, no
activations kept for a backward: what remains is the weights, the batch or the cache, and the
forward's temporaries.

Example:
  >>> from jaxmem import Experiment, analytic
  >>> from jaxmem.inference import build_decode_program
  >>> from jaxmem.setup import resolve
  >>> config = Experiment.from_dict({"task": "decode", "inference": {"context": 64},
  ...                                "data": {"batch_size": 4}}).config
  >>> program = build_decode_program(resolve(config))
  >>> analytic.tree_bytes(program.cache)  # 2 (k, v) x 2 layers x 4 x 64 x 128 x 4 bytes
  524288
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from jaxmem import precision, prune, quant, sharding
from jaxmem.errors import ConfigError
from jaxmem.models.attention import KVCache
from jaxmem.program import Program, abstract_batch, no_eager_sharding, variable_shardings

if TYPE_CHECKING:
    from jaxmem.setup import Setup

WEIGHT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_fn(setup: Setup) -> Callable[[], nnx.Module]:
    """Builds the model, then prunes and quantises it as ``config.inference`` says."""
    inf, workload, seed = setup.config.inference, setup.workload, setup.config.data.seed

    def make() -> nnx.Module:
        model = workload.init(nnx.Rngs(seed))
        if inf.prune == "masked":
            prune.mask_mlps(model, inf.prune_fraction)
        if inf.weights == "int8":
            quant.quantize(model)
        return model

    return make


@dataclasses.dataclass(frozen=True)
class _Weights:
    graphdef: nnx.GraphDef
    params: Any  # ShapeDtypeStructs, placed
    rest: Any
    init: Any  # jitted () -> (params, rest)


def _weights(setup: Setup) -> _Weights:
    policy, weights = setup.precision, setup.config.inference.weights
    make = model_fn(setup)
    store = WEIGHT_DTYPES.get(weights)

    def init_state() -> tuple[Any, Any]:
        with no_eager_sharding():
            model = make()
        _, params, rest = nnx.split(model, nnx.Param, ...)
        if weights != "int8":  # int8 models keep their float32 scales
            params = (policy.cast_to_param(params) if store is None
                      else precision.cast_floats(params, store))
        return params, rest

    with no_eager_sharding():
        model = nnx.eval_shape(make)
    graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    params, rest = jax.eval_shape(init_state)
    shardings = variable_shardings(setup, model, params, rest)
    params, rest = (sharding.place(t, s) for t, s in zip((params, rest), shardings, strict=True))
    return _Weights(graphdef, params, rest, jax.jit(init_state, out_shardings=shardings))


def build_inference_program(setup: Setup) -> Program:
    """A jitted forward pass over one batch of the model's inputs."""
    config, mesh, policy, workload = setup.config, setup.mesh, setup.precision, setup.workload
    if workload.predict is None:
        raise ConfigError("task", f"model {config.model.kind!r} gives no predict function "
                          "(Workload.predict)", value=config.task)
    w = _weights(setup)
    batch = abstract_batch({k: workload.batch[k] for k in workload.inputs}, mesh)

    def forward(params: Any, rest: Any, batch: dict[str, jax.Array]) -> jax.Array:
        model = nnx.merge(w.graphdef, policy.cast_to_compute(params), rest, copy=True)
        return workload.predict(model, policy.cast_to_compute(batch))

    step = jax.jit(sharding.with_rules(forward, mesh, setup.rules))
    program: Program

    def make_args(key: jax.Array) -> tuple[Any, ...]:
        return (*w.init(), program.sample_batch(key))

    program = Program(setup=setup, graphdef=w.graphdef, params=w.params, rest=w.rest,
                      opt_state=None, batch=batch, abstract_args=(w.params, w.rest, batch),
                      carried_args=0, step=step, make_args=make_args, init=w.init)
    return program


def build_decode_program(setup: Setup) -> Program:
    """A jitted decode step: one token per sequence at the last cache position; the cache is
    donated and updated in place."""
    config, mesh, policy, rules = setup.config, setup.mesh, setup.precision, setup.rules
    w = _weights(setup)
    m = config.model
    B, C = config.data.batch_size, config.inference.context or m.seq_len
    H, K = m.kv_heads(), m.d_model // m.num_heads
    shape = (m.num_layers, B, C, H, K)
    cache_sharding = NamedSharding(mesh, sharding.activation_spec(
        ("layers", "batch", "length", "heads", "kv"), shape, mesh, rules))
    kv = jax.ShapeDtypeStruct(shape, policy.compute_dtype, sharding=cache_sharding)
    cache = KVCache(kv, kv)
    tokens = abstract_batch({"tokens": jax.ShapeDtypeStruct((B, 1), jnp.int32)}, mesh)["tokens"]
    pos = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))

    def decode(cache: KVCache, params: Any, rest: Any, tokens_Bx1: jax.Array,
               pos: jax.Array) -> tuple[KVCache, jax.Array]:
        model = nnx.merge(w.graphdef, policy.cast_to_compute(params), rest, copy=True)
        logits_BxV, cache = model.decode(tokens_Bx1, cache, pos)
        return cache, logits_BxV

    step = jax.jit(sharding.with_rules(decode, mesh, rules), donate_argnums=0,
                   out_shardings=(KVCache(cache_sharding, cache_sharding), None))

    def make_args(key: jax.Array) -> tuple[Any, ...]:
        params, rest = w.init()
        zeros = jax.jit(lambda: jnp.zeros(kv.shape, kv.dtype), out_shardings=cache_sharding)
        ids = jax.random.randint(key, tokens.shape, 0, m.vocab_size, jnp.int32)
        return (KVCache(zeros(), zeros()), params, rest,
                jax.device_put(ids, tokens.sharding), jnp.int32(C - 1))

    return Program(setup=setup, graphdef=w.graphdef, params=w.params, rest=w.rest,
                   opt_state=None, batch={"tokens": tokens},
                   abstract_args=(cache, w.params, w.rest, tokens, pos), carried_args=1,
                   step=step, make_args=make_args, init=w.init, cache=cache)
