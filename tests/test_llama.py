"""``llama``: its layers against plain JAX, grouped-query attention, decoding, shipped shapes."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmem
from jaxmem import _convert, analytic
from jaxmem.config import Config
from jaxmem.errors import ConfigError
from jaxmem.models import attention as A
from jaxmem.models.layers import rms_norm, swiglu
from jaxmem.models.llama import CHECKPOINT_NAMES, LlamaConfig

TINY = {"kind": "llama", "vocab_size": 128, "seq_len": 16, "num_layers": 2, "d_model": 32,
        "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 48}


def _config(**raw) -> Config:
    return _convert.from_dict(Config, raw)


def test_rms_norm_matches_plain_jax_and_its_gradient():
    x = jax.random.normal(jax.random.key(0), (3, 5, 16)) * 2
    scale = jax.random.normal(jax.random.key(1), (16,))
    g = jax.random.normal(jax.random.key(2), x.shape)

    def ref(x, scale):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale[None, None]

    np.testing.assert_allclose(rms_norm(x, scale), ref(x, scale), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.vjp(rms_norm, x, scale)[1](g),
                                jax.vjp(ref, x, scale)[1](g), rtol=1e-4, atol=1e-5)


def test_swiglu_matches_plain_jax_and_keeps_only_its_inputs():
    a, b, g = (jax.random.normal(jax.random.key(i), (4, 24)) * 3 for i in range(3))

    def ref(a, b):
        return jax.nn.silu(a) * b

    np.testing.assert_allclose(swiglu(a, b), ref(a, b), rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(jax.vjp(swiglu, a, b)[1](g), jax.vjp(ref, a, b)[1](g),
                                rtol=1e-5, atol=1e-5)
    residuals = analytic.saved_residuals(lambda a, b: jnp.sum(swiglu(a, b)), a, b)
    assert sum(r.bytes for r in residuals) <= a.nbytes + b.nbytes


def test_rotary_embeddings_make_scores_depend_on_relative_position():
    q, k = (jax.random.normal(jax.random.key(i), (1, 1, 1, 8)) for i in range(2))

    def score(m: int, n: int) -> float:
        qm = A.rope(q, jnp.array([m]), 10000.0)
        kn = A.rope(k, jnp.array([n]), 10000.0)
        return float(jnp.sum(qm * kn))

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    # a rotation: norms are kept
    np.testing.assert_allclose(jnp.linalg.norm(A.rope(q, jnp.array([7]), 10000.0)),
                               jnp.linalg.norm(q), rtol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_grouped_query_attention_equals_repeated_heads(causal):
    """Each key/value head serves H/G query heads: the same as repeating it H/G times."""
    q = jax.random.normal(jax.random.key(0), (2, 32, 8, 16))
    k, v = (jax.random.normal(jax.random.key(i), (2, 32, 2, 16)) for i in (1, 2))
    ref = A.naive(q, A.repeat_heads(k, 8), A.repeat_heads(v, 8), causal=causal, window=0)
    for impl in ("naive", "blockwise", "xla"):
        out = A.IMPLEMENTATIONS[impl](q, k, v, causal=causal, window=0, chunk=8)
        np.testing.assert_allclose(out, ref, atol=2e-6, err_msg=impl)

    def loss(k, v):
        return jnp.sum(A.naive(q, k, v, causal=causal, window=0) ** 2)

    def ref_loss(k, v):
        return jnp.sum(A.naive(q, A.repeat_heads(k, 8), A.repeat_heads(v, 8), causal=causal,
                               window=0) ** 2)

    chex.assert_trees_all_close(jax.grad(loss, (0, 1))(k, v), jax.grad(ref_loss, (0, 1))(k, v),
                                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stack", ["loop", "scan"])
def test_every_checkpoint_name_is_tagged(stack):
    program = jaxmem.build_program(_config(model={**TINY, "stack": stack}))
    jaxpr = str(jax.make_jaxpr(program.objective)(program.params, program.rest, program.batch))
    for name in CHECKPOINT_NAMES:
        assert f"name={name}" in jaxpr, name


def test_decode_matches_the_full_forward():
    """Rotary positions and grouped key/value heads in the cache give the full forward's
    logits, token by token."""
    config = _config(model={**TINY, "stack": "scan"}, task="decode", data={"batch_size": 2})
    model = jaxmem.build_program(config).workload.init(nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 128)
    full = model(tokens)
    shape = (2, 2, 16, 2, 8)  # layers, batch, context, key/value heads, head width
    cache = A.KVCache(jnp.zeros(shape), jnp.zeros(shape))
    decode = nnx.jit(lambda m, t, c, p: m.decode(t, c, p))
    for t in range(16):
        logits, cache = decode(model, tokens[:, t:t + 1], cache, jnp.int32(t))
        np.testing.assert_allclose(logits, full[:, t], atol=1e-4, rtol=1e-4)


def test_the_kv_cache_has_the_key_value_heads():
    def cache(kv_heads: int) -> int:
        config = _config(model={**TINY, "num_kv_heads": kv_heads}, task="decode")
        return analytic.numbers(jaxmem.build_program(config))["kv_cache_bytes"]

    assert cache(4) == 2 * cache(2) == 4 * cache(1)


def test_published_llama3_8b_shape_has_8b_parameters():
    """The shipped experiment's shape counts Llama 3 8B's published 8,030,261,248 parameters
    (the formulas are checked against the model's own at small shapes in test_estimate)."""
    exp = jaxmem.Experiment.from_yaml("experiments/plan_llama8b_v5p.yaml")
    model = exp.config.model
    opts = jaxmem.resolve(exp.config).build_options
    assert sum(int(np.prod(s)) for _, s in model.anatomy(opts, 1).params) == 8_030_261_248


@pytest.mark.parametrize("bad, message", [
    ({"num_kv_heads": 3}, "model.num_kv_heads: must divide num_heads=4"),
    ({"d_model": 36, "num_heads": 4, "num_kv_heads": 0}, "model.num_heads: rotary"),
    ({"rope_theta": 0}, "model.rope_theta: must be > 0"),
])
def test_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        jaxmem.Experiment.from_dict({"model": {**TINY, **bad}})


def test_tensor_parallelism_must_split_the_key_value_heads():
    config = _config(model=TINY, target="cpu:8", sharding="tp", mesh={"data": 2, "tensor": 4})
    with pytest.raises(ConfigError, match="model.num_kv_heads: must be divisible by the 4"):
        _ = jaxmem.resolve(config).mesh


def test_llama_config_is_a_registered_kind():
    assert jaxmem.ModelConfig.KINDS["llama"] is LlamaConfig
