"""Dynamic loss scaling for float16 training.

float16 has 5 exponent bits: gradients below about 6e-8 flush to zero. Multiplying the loss by a
large scale lifts the backward's values into range; the gradients are divided by it again before
the update. When a step's gradients overflow (inf/nan) the update is skipped and the scale backs
off; after ``growth_interval`` good steps it grows again.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem.loss_scale import DynamicLossScale
  >>> ls = DynamicLossScale(init_scale=1024.0)
  >>> state = ls.init()
  >>> float(ls.adjust(state, jnp.bool_(False)).scale)  # an overflow halves the scale
  512.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class LossScaleState(NamedTuple):
    """The current scale and the count of finite steps since it last changed."""

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """Scale schedule: start at ``init_scale``, x``growth_factor`` after ``growth_interval``
    finite steps, x``backoff_factor`` after a non-finite one, never below ``min_scale``."""

    init_scale: float = 2.0**15
    growth_interval: int = 2000
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    min_scale: float = 1.0

    def init(self) -> LossScaleState:
        return LossScaleState(jnp.float32(self.init_scale), jnp.int32(0))

    def adjust(self, state: LossScaleState, finite: jax.Array) -> LossScaleState:
        """The state after a step whose gradients were ``finite`` (a bool scalar)."""
        grow = finite & (state.good_steps + 1 >= self.growth_interval)
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * self.growth_factor, state.scale),
            jnp.maximum(state.scale * self.backoff_factor, self.min_scale),
        )
        good = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        return LossScaleState(scale.astype(jnp.float32), good.astype(jnp.int32))


def all_finite(tree: Any) -> jax.Array:
    """True when every element of every floating leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def select(pred: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``pred`` else ``old``, leaf by leaf (skipping a step's update)."""
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)
