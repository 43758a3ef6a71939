"""Multi-head self-attention, and a softmax that keeps its residual in the input dtype.

Shape suffixes: B batch, L query length, M key length, D d_model, H heads, K head dim.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name


@jax.custom_vjp
def softmax(logits: jax.Array) -> jax.Array:
    """Softmax over the last axis, computed in float32, returned in the input dtype.

    ``jax.nn.softmax(x.astype(f32)).astype(bf16)`` would keep the float32 output alive for the
    backward pass; this one keeps only its (bf16) output, which the attention needs anyway, and
    redoes the float32 arithmetic in the backward. Same values, half the residual in bf16.
    """
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(logits.dtype)


def _softmax_fwd(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    probs = softmax(logits)
    return probs, probs


def _softmax_bwd(probs: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    p32, g32 = probs.astype(jnp.float32), g.astype(jnp.float32)
    dx = p32 * (g32 - jnp.sum(g32 * p32, axis=-1, keepdims=True))
    return (dx.astype(probs.dtype),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


class Attention(nnx.Module):
    """Multi-head self-attention with separate q/k/v projections (tagged for remat)."""

    def __init__(
        self, d_model: int, num_heads: int, *, causal: bool, dtype: Any, rngs: nnx.Rngs
    ):
        self.num_heads = num_heads
        self.causal = causal
        self.query = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.key = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.value = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        B, L, D = x_BxLxD.shape
        H = self.num_heads
        K = D // H
        q_BxLxHxK = checkpoint_name(self.query(x_BxLxD).reshape(B, L, H, K), "query")
        k_BxMxHxK = checkpoint_name(self.key(x_BxLxD).reshape(B, L, H, K), "key")
        v_BxMxHxK = checkpoint_name(self.value(x_BxLxD).reshape(B, L, H, K), "value")
        q_BxLxHxK = q_BxLxHxK / jnp.asarray(math.sqrt(K), q_BxLxHxK.dtype)
        logits_BxHxLxM = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k_BxMxHxK)
        if self.causal:
            mask_1x1xLxM = jnp.tril(jnp.ones((L, L), dtype=bool))[None, None]
            big_negative = jnp.finfo(logits_BxHxLxM.dtype).min
            logits_BxHxLxM = jnp.where(mask_1x1xLxM, logits_BxHxLxM, big_negative)
        probs_BxHxLxM = softmax(logits_BxHxLxM)
        ctx_BxLxHxK = jnp.einsum("bhlm,bmhk->blhk", probs_BxHxLxM, v_BxMxHxK)
        ctx_BxLxHxK = checkpoint_name(ctx_BxLxHxK, "attn_context")
        return checkpoint_name(self.out(ctx_BxLxHxK.reshape(B, L, D)), "attn_out")
