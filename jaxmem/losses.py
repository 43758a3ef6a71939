"""Losses, computed in float32 whatever the compute dtype.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import losses
  >>> round(float(losses.cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log(4)
  1.3863
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over all leading dims, integer labels."""
    logits = logits_BxC.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels_B).mean()


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(diff * diff)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
