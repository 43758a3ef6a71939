"""Optimizers by name, built with optax from an :class:`~jaxmem.config.OptimizerConfig`.

State per parameter: ``sgd`` none (or one momentum buffer), ``lion`` one moment, ``adamw`` two,
``adafactor`` factored second moments (a row and a column vector per matrix). The state dtype is
its own knob (:func:`with_state_dtype`).

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
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from jaxmem.errors import ConfigError

if TYPE_CHECKING:
    from jaxmem.config import OptimizerConfig


def _adamw(c: OptimizerConfig) -> optax.GradientTransformation:
    return optax.adamw(c.learning_rate, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)


def _sgd(c: OptimizerConfig) -> optax.GradientTransformation:
    return optax.sgd(c.learning_rate, momentum=c.momentum or None, nesterov=c.nesterov)


def _adafactor(c: OptimizerConfig) -> optax.GradientTransformation:
    return optax.adafactor(c.learning_rate, weight_decay_rate=c.weight_decay or None)


def _lion(c: OptimizerConfig) -> optax.GradientTransformation:
    return optax.lion(c.learning_rate, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)


OPTIMIZERS: dict[str, Callable[[OptimizerConfig], optax.GradientTransformation]] = {
    "adamw": _adamw,
    "sgd": _sgd,
    "adafactor": _adafactor,
    "lion": _lion,
}

STATE_DTYPES: dict[str, Any] = {
    "auto": None,  # whatever the optimizer makes: the parameters' dtype
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0:
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def with_state_dtype(tx: optax.GradientTransformation, dtype: Any) -> optax.GradientTransformation:
    """``tx`` whose floating state arrays are stored in ``dtype`` between steps.

    The update itself runs in float32 (the state is upcast, updated, and cast back), so a
    bfloat16 state halves the memory without doing the arithmetic in bfloat16. Scalars (step
    counts) keep their dtype.
    """

    def init(params: Any) -> Any:
        return _cast_floats(tx.init(params), dtype)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates, state = tx.update(updates, _cast_floats(state, jnp.float32), params)
        return updates, _cast_floats(state, dtype)

    return optax.GradientTransformation(init, update)


def build(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation the config names, with its state dtype."""
    try:
        make = OPTIMIZERS[config.name]
    except KeyError:
        raise ConfigError("optimizer.name", "unknown optimizer", value=config.name,
                          choices=sorted(OPTIMIZERS)) from None
    tx = make(config)
    dtype = STATE_DTYPES[config.state_dtype]
    return tx if dtype is None else with_state_dtype(tx, dtype)
