"""Gradients of the training objective: plain, loss-scaled, or accumulated over microbatches.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import grads
  >>> def objective(p, rest, batch):
  ...     return jnp.mean((batch["x"] * p["w"]) ** 2), rest
  >>> batch = {"x": jnp.arange(8.0)}
  >>> full = grads.value_and_grad(objective, {"w": jnp.float32(1.0)}, {}, batch)
  >>> acc = grads.accumulated(objective, {"w": jnp.float32(1.0)}, {}, batch, microbatches=4)
  >>> float(full[2]["w"]), float(acc[2]["w"])
  (35.0, 35.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Objective = Callable[[Any, Any, Any], tuple[jax.Array, Any]]


def value_and_grad(objective: Objective, params: Any, rest: Any, batch: Any,
                   scale: jax.Array | None = None) -> tuple[jax.Array, Any, Any]:
    """``(loss, new_rest, grads)``. With ``scale``, the loss is multiplied by it before the
    backward (so float16 cotangents stay in range) and the gradients divided by it after."""

    def scaled(p: Any, r: Any, b: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        loss, r = objective(p, r, b)
        return (loss if scale is None else loss * scale), (loss, r)

    (_, (loss, rest)), g = jax.value_and_grad(scaled, has_aux=True)(params, rest, batch)
    if scale is not None:
        g = jax.tree.map(lambda x: (x.astype(jnp.float32) / scale).astype(x.dtype), g)
    return loss, rest, g


def split_microbatches(batch: Any, microbatches: int) -> Any:
    """Leading axis ``B`` -> ``(microbatches, B // microbatches)``, taking every k-th example
    into microbatch k, so that a batch split over devices stays split within each microbatch."""

    def split(x: jax.Array) -> jax.Array:
        B = x.shape[0]
        return x.reshape(B // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def accumulated(objective: Objective, params: Any, rest: Any, batch: Any, microbatches: int,
                scale: jax.Array | None = None,
                constrain: Callable[[Any], Any] | None = None) -> tuple[jax.Array, Any, Any]:
    """Like :func:`value_and_grad` over the whole batch, one microbatch at a time (a scan):
    activations exist for one microbatch only. Loss and gradients are the microbatch means,
    accumulated in float32, which equal the full batch's for a mean loss.

    Args:
      constrain: applied to each microbatch, e.g. to keep it split over the data axis.
    """
    parts = split_microbatches(batch, microbatches)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def body(carry: Any, micro: Any) -> tuple[Any, None]:
        rest, g_sum, loss_sum = carry
        if constrain is not None:
            micro = constrain(micro)
        loss, rest, g = value_and_grad(objective, params, rest, micro, scale)
        g_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)
        return (rest, g_sum, loss_sum + loss.astype(jnp.float32)), None

    (rest, g_sum, loss_sum), _ = jax.lax.scan(body, (rest, zeros, jnp.float32(0)), parts)
    g = jax.tree.map(lambda s, p: (s / microbatches).astype(p.dtype), g_sum, params)
    return loss_sum / microbatches, rest, g
