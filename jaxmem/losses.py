"""Losses, computed in float32 whatever the compute dtype.

``cross_entropy`` keeps only its logits (in their own dtype) and one float32 log-normaliser per
row for the backward, instead of float32 copies of the softmax: with bf16 logits over a large
vocabulary that halves the loss's share of the activations.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import losses
  >>> round(float(losses.cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log(4)
  1.3863
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


@jax.custom_vjp
def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over all leading dims, integer labels."""
    return _ce_fwd(logits_BxC, labels_B)[0]


def _ce_fwd(logits, labels):
    chex.assert_shape(labels, logits.shape[:-1])  # one integer label per row of logits
    chex.assert_type(labels, int)
    logits32 = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits32, axis=-1)
    picked = jnp.take_along_axis(logits32, labels[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - picked), (logits, labels, lse)


def _ce_bwd(res, g):
    logits, labels, lse = res
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    d_logits = (probs - onehot) * (g / labels.size)
    return d_logits.astype(logits.dtype), None


cross_entropy.defvjp(_ce_fwd, _ce_bwd)


def chunked_cross_entropy(hidden_NxD: jax.Array, weight_DxV: jax.Array, labels_N: jax.Array,
                          chunks: int) -> jax.Array:
    """Mean cross-entropy of ``hidden @ weight`` without the full ``NxV`` logits ever existing.

    Tokens go through in ``chunks`` pieces (a scan); each piece's logits are recomputed in the
    backward instead of kept, so at most ``N/chunks x V`` logits are alive at once.
    """
    N, D = hidden_NxD.shape
    n = N // chunks
    h_CxNxD = hidden_NxD.reshape(chunks, n, D)
    y_CxN = labels_N.reshape(chunks, n)

    def body(total: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        h_nxD, y_n = xs
        logits_nxV = (h_nxD @ weight_DxV).astype(jnp.float32)
        lse_n = jax.nn.logsumexp(logits_nxV, axis=-1)
        picked_n = jnp.take_along_axis(logits_nxV, y_n[:, None], axis=-1)[:, 0]
        return total + jnp.sum(lse_n - picked_n), None

    body = jax.checkpoint(body, prevent_cse=False)  # keep only each chunk's inputs
    total, _ = jax.lax.scan(body, jnp.float32(0), (h_CxNxD, y_CxN))
    return total / N


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(diff * diff)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
