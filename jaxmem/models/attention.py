"""Multi-head self-attention and its implementations, by name.

Every implementation maps unscaled ``q, k, v`` of shape ``BxLxHxK`` to the context ``BxLxHxK``:

* ``naive``: the full ``BxHxLxL`` score matrix (what the backward keeps grows with L²).
* ``blockwise``: memory-efficient attention: query chunks one at a time (checkpointed), key
  chunks with an online softmax; never more than ``BxHxCxL`` scores. Same values as ``naive``.
* ``xla`` / ``cudnn``: ``jax.nn.dot_product_attention`` with that implementation (``cudnn``
  needs a CUDA GPU).
* ``linear``: kernelised attention with positive random features (Performer, FAVOR+), linear in
  L; an approximation of softmax attention, for teaching.

``window`` > 0 restricts each query to keys within that distance (causal: the last ``window``
positions including itself). Shape suffixes: B batch, L length, H heads, K head dim, C chunk,
M random features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxmem.errors import Unsupported
from jaxmem.sharding import constrain

NEG = -1e30  # finite "minus infinity": exp(NEG - NEG) stays defined


@jax.custom_vjp
def softmax(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax over the last axis, computed in float32, returned in the input dtype; positions
    where ``mask`` (broadcastable bool) is False get probability 0.

    The backward keeps only the (bf16) output, which the attention needs anyway, and redoes the
    float32 arithmetic. ``jax.nn.softmax(x.astype(f32)).astype(bf16)`` would keep a float32
    copy, and a ``jnp.where`` mask before it would keep the mask broadcast to the scores' full
    shape (and a zero tangent of that shape): an ``S x S`` bool per head and sequence. Here the
    mask needs no residual: masked positions have probability 0, so their gradient is 0 too.
    """
    x = logits.astype(jnp.float32)
    if mask is not None:
        x = jnp.where(mask, x, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(x, axis=-1).astype(logits.dtype)


def _softmax_fwd(logits: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    probs = softmax(logits, mask)
    return probs, probs


def _softmax_bwd(probs: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    p32, g32 = probs.astype(jnp.float32), g.astype(jnp.float32)
    dx = p32 * (g32 - jnp.sum(g32 * p32, axis=-1, keepdims=True))
    return dx.astype(probs.dtype), None


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def allowed(q_pos: jax.Array, k_pos: jax.Array, *, causal: bool, window: int) -> jax.Array:
    """``len(q_pos) x len(k_pos)`` bool: which keys each query may attend to."""
    d = q_pos[:, None] - k_pos[None, :]
    ok = d >= 0 if causal else jnp.ones(d.shape, bool)
    if window:
        ok &= (d < window) if causal else (jnp.abs(d) < window)
    return ok


def naive(q, k, v, *, causal: bool, window: int, **_: Any) -> jax.Array:
    """Full score matrix, masked, softmax in float32. Keys and values may have fewer heads
    than queries (grouped-query attention: each serves ``H / G`` query heads)."""
    B, L, H, K = q.shape
    G = k.shape[2]
    q_BxLxHxK = q / jnp.asarray(math.sqrt(K), q.dtype)
    mask = None
    if causal or window:
        pos = jnp.arange(L)
        mask = allowed(pos, pos, causal=causal, window=window)
    if G == H:
        logits_BxHxLxL = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k)
        probs_BxHxLxL = softmax(logits_BxHxLxL, None if mask is None else mask[None, None])
        return jnp.einsum("bhlm,bmhk->blhk", probs_BxHxLxL, v)
    # R query heads per key head, next to the query position: (L, R) rows per key head need
    # no copy of the scores between the two matmuls (an (R, L) order costs XLA one)
    q_BxLxGxRxK = q_BxLxHxK.reshape(B, L, G, H // G, K)
    logits_BxGxLxRxL = jnp.einsum("blgrk,bmgk->bglrm", q_BxLxGxRxK, k)
    probs_BxGxLxRxL = softmax(logits_BxGxLxRxL,
                              None if mask is None else mask[None, None, :, None, :])
    return jnp.einsum("bglrm,bmgk->blgrk", probs_BxGxLxRxL, v).reshape(B, L, H, K)


def repeat_heads(k: jax.Array, heads: int) -> jax.Array:
    """Keys or values ``BxLxGxK`` repeated to ``heads`` heads (for implementations without
    grouped-query support: the copy is a real value that autodiff may keep)."""
    return k if k.shape[2] == heads else jnp.repeat(k, heads // k.shape[2], axis=2)


def blockwise(q, k, v, *, causal: bool, window: int, chunk: int, **_: Any) -> jax.Array:
    """Memory-efficient attention: the same values as :func:`naive`, in chunks."""
    B, L, H, K = q.shape
    k, v = repeat_heads(k, H), repeat_heads(v, H)
    C = min(chunk, L)
    n = L // C
    scale = 1.0 / math.sqrt(K)
    k_BxNxCxHxK = k.reshape(B, n, C, H, K)
    v_BxNxCxHxK = v.reshape(B, n, C, H, K)

    def query_chunk(q_BxCxHxK: jax.Array, i: jax.Array) -> jax.Array:
        q_pos = i * C + jnp.arange(C)
        q32 = q_BxCxHxK.astype(jnp.float32) * scale

        def kv_step(carry, j):
            m_BxHxC, l_BxHxC, acc_BxCxHxK = carry
            k_j = jax.lax.dynamic_index_in_dim(k_BxNxCxHxK, j, axis=1, keepdims=False)
            v_j = jax.lax.dynamic_index_in_dim(v_BxNxCxHxK, j, axis=1, keepdims=False)
            s_BxHxCxC = jnp.einsum("bqhk,bchk->bhqc", q32, k_j.astype(jnp.float32))
            ok_1x1xCxC = allowed(q_pos, j * C + jnp.arange(C), causal=causal,
                                 window=window)[None, None]
            s_BxHxCxC = jnp.where(ok_1x1xCxC, s_BxHxCxC, NEG)
            m_new = jnp.maximum(m_BxHxC, s_BxHxCxC.max(axis=-1))
            p_BxHxCxC = jnp.where(ok_1x1xCxC, jnp.exp(s_BxHxCxC - m_new[..., None]), 0.0)
            corr_BxHxC = jnp.exp(m_BxHxC - m_new)
            l_new = l_BxHxC * corr_BxHxC + p_BxHxCxC.sum(axis=-1)
            pv_BxCxHxK = jnp.einsum("bhqc,bchk->bqhk", p_BxHxCxC, v_j.astype(jnp.float32))
            acc_new = acc_BxCxHxK * corr_BxHxC.transpose(0, 2, 1)[..., None] + pv_BxCxHxK
            return (m_new, l_new, acc_new), None

        init = (jnp.full((B, H, C), NEG, jnp.float32), jnp.zeros((B, H, C), jnp.float32),
                jnp.zeros((B, C, H, K), jnp.float32))
        (_, l_BxHxC, acc), _ = jax.lax.scan(kv_step, init, jnp.arange(n))
        return (acc / l_BxHxC.transpose(0, 2, 1)[..., None]).astype(q.dtype)

    chunk_fn = jax.checkpoint(query_chunk, prevent_cse=False)
    q_NxBxCxHxK = q.reshape(B, n, C, H, K).swapaxes(0, 1)
    out_NxBxCxHxK = jax.lax.map(lambda args: chunk_fn(*args), (q_NxBxCxHxK, jnp.arange(n)))
    return out_NxBxCxHxK.swapaxes(0, 1).reshape(B, L, H, K)


def _jax_dpa(implementation: str):
    def attend(q, k, v, *, causal: bool, window: int, **_: Any) -> jax.Array:
        if window:
            local = (window - 1, 0) if causal else (window - 1, window - 1)
        else:
            local = None
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=local,
                                            implementation=implementation)

    return attend


def _features(x_BxLxHxK: jax.Array, w_MxK: jax.Array, stabiliser: jax.Array) -> jax.Array:
    """Positive random features ``exp(w.x - |x|^2/2) / sqrt(M)`` (FAVOR+)."""
    proj = jnp.einsum("blhk,mk->blhm", x_BxLxHxK, w_MxK)
    sq = 0.5 * jnp.sum(x_BxLxHxK * x_BxLxHxK, axis=-1, keepdims=True)
    return jnp.exp(proj - sq - stabiliser) / math.sqrt(w_MxK.shape[0])


def linear(q, k, v, *, causal: bool, features: int, **_: Any) -> jax.Array:
    """Performer-style linear attention; causal through prefix sums (memory ~ B·L·H·M·K)."""
    K = q.shape[-1]
    k, v = repeat_heads(k, q.shape[2]), repeat_heads(v, q.shape[2])
    w_MxK = jax.random.normal(jax.random.key(0), (features, K), jnp.float32)
    q32 = q.astype(jnp.float32) * K ** -0.25
    k32 = k.astype(jnp.float32) * K ** -0.25
    proj_q = jnp.einsum("blhk,mk->blhm", q32, w_MxK)
    proj_k = jnp.einsum("blhk,mk->blhm", k32, w_MxK)
    phi_q = _features(q32, w_MxK, jax.lax.stop_gradient(proj_q.max(axis=-1, keepdims=True)))
    phi_k = _features(k32, w_MxK, jax.lax.stop_gradient(proj_k.max()))
    v32 = v.astype(jnp.float32)
    if causal:
        kv_BxLxHxMxK = jnp.cumsum(jnp.einsum("blhm,blhk->blhmk", phi_k, v32), axis=1)
        num = jnp.einsum("blhm,blhmk->blhk", phi_q, kv_BxLxHxMxK)
        den = jnp.einsum("blhm,blhm->blh", phi_q, jnp.cumsum(phi_k, axis=1))
    else:
        num = jnp.einsum("blhm,bhmk->blhk", phi_q, jnp.einsum("blhm,blhk->bhmk", phi_k, v32))
        den = jnp.einsum("blhm,bhm->blh", phi_q, phi_k.sum(axis=1))
    return (num / den[..., None]).astype(q.dtype)


IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
    "naive": naive,
    "blockwise": blockwise,
    "xla": _jax_dpa("xla"),
    "cudnn": _jax_dpa("cudnn"),
    "linear": linear,
}
#: Implementations that can restrict attention to a window.
WINDOWED = ("naive", "blockwise", "xla", "cudnn")


def check_platform(implementation: str, platform: str) -> None:
    """Raises Unsupported for an implementation the platform cannot run."""
    if implementation == "cudnn" and platform != "gpu":
        raise Unsupported(f"attention 'cudnn' needs a CUDA GPU, not {platform}")


class KVCache(NamedTuple):
    """Keys and values of earlier positions: ``(layers, B, C, H, K)`` each (per layer inside
    a block: ``(B, C, H, K)``)."""

    k: jax.Array
    v: jax.Array


def rope(x_BxLxHxK: jax.Array, pos_L: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (the half-split form of Llama): feature pairs ``(i, i + K/2)``
    rotated by ``pos * theta ** (-2i / K)``, in float32. Linear in ``x``: its backward keeps
    nothing of ``x``."""
    K = x_BxLxHxK.shape[-1]
    freq = theta ** (-jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angle_LxK2 = pos_L.astype(jnp.float32)[:, None] * freq[None]
    cos, sin = jnp.cos(angle_LxK2)[None, :, None], jnp.sin(angle_LxK2)[None, :, None]
    x32 = x_BxLxHxK.astype(jnp.float32)
    x1, x2 = x32[..., : K // 2], x32[..., K // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with separate q/k/v projections (tagged for remat).

    ``num_kv_heads`` < ``num_heads``: grouped-query attention (keys and values have fewer
    heads, each shared by ``num_heads / num_kv_heads`` query heads). ``rope_theta`` > 0:
    rotary position embeddings on queries and keys. ``use_bias``: biases on the projections.
    """

    def __init__(self, d_model: int, num_heads: int, *, causal: bool, dtype: Any,
                 implementation: str = "naive", chunk: int = 128, window: int = 0,
                 features: int = 64, num_kv_heads: int | None = None, rope_theta: float = 0.0,
                 use_bias: bool = True, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.rope_theta = rope_theta
        self.causal = causal
        self.implementation = implementation
        self.options = (("window", window), ("chunk", chunk), ("features", features))
        kv_width = d_model // num_heads * self.num_kv_heads

        def linear(d_in: int, d_out: int) -> nnx.Linear:
            return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, rngs=rngs)

        self.query = linear(d_model, d_model)
        self.key = linear(d_model, kv_width)
        self.value = linear(d_model, kv_width)
        self.out = linear(d_model, d_model)

    def _rotate(self, x_BxLxHxK: jax.Array, pos_L: jax.Array) -> jax.Array:
        return rope(x_BxLxHxK, pos_L, self.rope_theta) if self.rope_theta else x_BxLxHxK

    def decode(self, x_Bx1xD: jax.Array, cache: KVCache, pos: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """Attention of one new token per sequence over the cached positions ``<= pos``."""
        B, _, D = x_Bx1xD.shape
        H, G = self.num_heads, self.num_kv_heads
        K = D // H
        C = cache.k.shape[1]
        q_Bx1xHxK = self._rotate(self.query(x_Bx1xD).reshape(B, 1, H, K), pos[None])
        k_Bx1xGxK = self._rotate(self.key(x_Bx1xD).reshape(B, 1, G, K), pos[None])
        v_Bx1xGxK = self.value(x_Bx1xD).reshape(B, 1, G, K)
        zero = jnp.zeros((), jnp.int32)
        k_BxCxGxK = jax.lax.dynamic_update_slice(cache.k, k_Bx1xGxK.astype(cache.k.dtype),
                                                 (zero, pos, zero, zero))
        v_BxCxGxK = jax.lax.dynamic_update_slice(cache.v, v_Bx1xGxK.astype(cache.v.dtype),
                                                 (zero, pos, zero, zero))
        q_Bx1xGxRxK = q_Bx1xHxK.reshape(B, 1, G, H // G, K) / jnp.asarray(
            math.sqrt(K), q_Bx1xHxK.dtype)
        logits_BxGxRx1xC = jnp.einsum("blgrk,bmgk->bgrlm", q_Bx1xGxRxK,
                                      k_BxCxGxK.astype(q_Bx1xHxK.dtype))
        window = dict(self.options)["window"]
        mask_1x1x1x1xC = allowed(pos[None], jnp.arange(C), causal=True,
                                 window=window)[None, None, None]
        probs_BxGxRx1xC = softmax(logits_BxGxRx1xC, mask_1x1x1x1xC)
        ctx_Bx1xGxRxK = jnp.einsum("bgrlm,bmgk->blgrk", probs_BxGxRx1xC,
                                   v_BxCxGxK.astype(probs_BxGxRx1xC.dtype))
        return self.out(ctx_Bx1xGxRxK.reshape(B, 1, D)), KVCache(k_BxCxGxK, v_BxCxGxK)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        B, L, D = x_BxLxD.shape
        H, G = self.num_heads, self.num_kv_heads
        K = D // H
        heads = ("batch", "length", "heads", "kv")
        pos_L = jnp.arange(L)
        q_BxLxHxK = constrain(self._rotate(self.query(x_BxLxD).reshape(B, L, H, K), pos_L),
                              heads)
        k_BxLxGxK = constrain(self._rotate(self.key(x_BxLxD).reshape(B, L, G, K), pos_L),
                              heads)
        v_BxLxGxK = constrain(self.value(x_BxLxD).reshape(B, L, G, K), heads)
        q_BxLxHxK = checkpoint_name(q_BxLxHxK, "query")
        k_BxLxGxK = checkpoint_name(k_BxLxGxK, "key")
        v_BxLxGxK = checkpoint_name(v_BxLxGxK, "value")
        attend = IMPLEMENTATIONS[self.implementation]
        ctx_BxLxHxK = attend(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, causal=self.causal,
                             **dict(self.options))
        ctx_BxLxHxK = checkpoint_name(constrain(ctx_BxLxHxK, heads), "attn_context")
        return checkpoint_name(self.out(ctx_BxLxHxK.reshape(B, L, D)), "attn_out")
