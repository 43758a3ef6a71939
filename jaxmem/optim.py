"""Optimizers by name, built with optax from an :class:`~jaxmem.config.OptimizerConfig`.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import optim
  >>> from jaxmem.config import OptimizerConfig
  >>> tx = optim.build(OptimizerConfig(name="sgd", learning_rate=0.1))
  >>> params = {"w": jnp.ones(3)}
  >>> updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params))
  >>> [round(float(u), 3) for u in updates["w"]]
  [-0.1, -0.1, -0.1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optax

from jaxmem.errors import ConfigError

if TYPE_CHECKING:
    from jaxmem.config import OptimizerConfig


def _adamw(c: OptimizerConfig) -> optax.GradientTransformation:
    return optax.adamw(c.learning_rate, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)


def _sgd(c: OptimizerConfig) -> optax.GradientTransformation:
    return optax.sgd(c.learning_rate, momentum=c.momentum or None, nesterov=c.nesterov)


OPTIMIZERS: dict[str, Callable[[OptimizerConfig], optax.GradientTransformation]] = {
    "adamw": _adamw,
    "sgd": _sgd,
}


def build(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation the config names."""
    try:
        make = OPTIMIZERS[config.name]
    except KeyError:
        raise ConfigError("optimizer.name", "unknown optimizer", value=config.name,
                          choices=sorted(OPTIMIZERS)) from None
    return make(config)

