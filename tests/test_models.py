"""The model zoo: shapes, parameter counts, checkpoint names, training steps that learn."""

from __future__ import annotations

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmem
from jaxmem import analytic
from jaxmem.models import (
    CHECKPOINT_NAMES,
    BuildOptions,
    CNNConfig,
    EncoderConfig,
    GPTConfig,
    LlamaConfig,
    MLPConfig,
)
from jaxmem.models.attention import softmax
from jaxmem.models.layers import gelu

TINY_MODELS = {
    "gpt-loop": GPTConfig(vocab_size=64, seq_len=16, num_layers=2, d_model=32, num_heads=4),
    "gpt-scan": GPTConfig(vocab_size=64, seq_len=16, num_layers=2, d_model=32, num_heads=4,
                          stack="scan"),
    "gpt-untied": GPTConfig(vocab_size=64, seq_len=16, num_layers=1, d_model=32, num_heads=2,
                            tie_embeddings=False),
    "llama": LlamaConfig(vocab_size=64, seq_len=16, num_layers=2, d_model=32, num_heads=4,
                         num_kv_heads=2, mlp_dim=48, stack="scan"),
    "encoder": EncoderConfig(vocab_size=64, seq_len=16, num_layers=2, d_model=32, num_heads=4,
                             num_classes=3),
    "mlp": MLPConfig(in_features=12, hidden=(32, 16), out_features=5),
    "mlp-mse": MLPConfig(in_features=12, hidden=(32,), out_features=5, loss="mse"),
    "cnn": CNNConfig(image_size=16, in_channels=3, channels=(8, 16), num_classes=4),
    "cnn-separable": CNNConfig(image_size=16, in_channels=3, channels=(8, 16), num_classes=4,
                               depthwise_separable=True),
}
OUTPUT_SHAPES = {"gpt": (4, 16, 64), "llama": (4, 16, 64), "encoder": (4, 3), "mlp": (4, 5),
                 "cnn": (4, 4)}


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_forward_shapes_and_finite_loss(name):
    config = TINY_MODELS[name]
    workload = config.build(BuildOptions(batch_size=4))
    model = workload.init(nnx.Rngs(0))
    batch = workload.synthetic_batch(jax.random.key(0))
    first_input = batch[sorted(workload.batch)[0]]
    assert model(first_input).shape == OUTPUT_SHAPES[config.kind]
    chex.assert_tree_all_finite(workload.loss(model, batch))


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_param_bytes_equal_count_times_dtype_size(name):
    for policy in ("fp32", "bf16-mixed"):
        config = jaxmem.Config(model=TINY_MODELS[name], data=jaxmem.DataConfig(batch_size=4),
                               precision=jaxmem.PrecisionConfig(policy))
        program = jaxmem.build_program(config)
        count = analytic.tree_count(program.params)
        assert analytic.tree_bytes(program.params) == 4 * count  # f32 master weights
        leaves = jax.tree.leaves(program.params)
        assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}


def test_gpt2_small_has_124m_parameters():
    exp = jaxmem.Experiment.from_yaml("experiments/gpt2_small.yaml")
    program = jaxmem.build_program(exp.config)
    assert analytic.tree_count(program.params) == 124_439_808  # GPT-2 small, tied embeddings


def test_scan_and_loop_stacks_have_the_same_parameters():
    counts = [analytic.tree_count(jaxmem.build_program(jaxmem.Config(model=TINY_MODELS[n])).params)
              for n in ("gpt-loop", "gpt-scan")]
    assert counts[0] == counts[1]


@pytest.mark.parametrize("stack", ["loop", "scan"])
def test_every_checkpoint_name_is_tagged(stack):
    config = jaxmem.Config(model=TINY_MODELS[f"gpt-{stack}"])
    program = jaxmem.build_program(config)
    jaxpr = str(jax.make_jaxpr(program.objective)(program.params, program.rest, program.batch))
    for name in CHECKPOINT_NAMES:
        assert f"name={name}" in jaxpr, name


def test_softmax_matches_jax_and_its_gradient():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7))
    g = jax.random.normal(jax.random.key(1), (3, 5, 7))
    np.testing.assert_allclose(softmax(x), jax.nn.softmax(x, axis=-1), rtol=1e-6)
    ours = jax.vjp(softmax, x)[1](g)[0]
    ref = jax.vjp(lambda v: jax.nn.softmax(v, axis=-1), x)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert softmax(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["gpt-scan", "llama", "encoder", "cnn", "mlp"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_training_steps_reduce_the_loss(name, optimizer):
    config = jaxmem.Config(
        model=TINY_MODELS[name], data=jaxmem.DataConfig(batch_size=8),
        optimizer=jaxmem.OptimizerConfig(name=optimizer, learning_rate=1e-2, momentum=0.9),
        remat=jaxmem.RematConfig("full"),
    )
    program = jaxmem.build_program(config)
    params, rest, opt_state = program.init()
    batch = program.sample_batch(jax.random.key(1))
    losses = []
    for _ in range(5):
        params, rest, opt_state, loss = program.step(params, rest, opt_state, batch)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_remat_does_not_change_the_gradient():
    grads = {}
    for policy in ("none", "dots", "full"):
        config = jaxmem.Config(model=TINY_MODELS["gpt-scan"], remat=jaxmem.RematConfig(policy))
        program = jaxmem.build_program(config)
        params, rest, _ = program.init()
        batch = program.sample_batch(jax.random.key(0))
        grads[policy] = jax.grad(lambda p: program.objective(p, rest, batch)[0])(params)
    chex.assert_trees_all_close(grads["none"], grads["full"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grads["none"], grads["dots"], rtol=1e-5, atol=1e-6)


def test_custom_model_with_batch_statistics_trains():
    exp = jaxmem.Experiment.from_yaml("experiments/custom_model.yaml",
                                      ["model.options={width: 16, depth: 2}", "remat=full",
                                       "data.batch_size=8"])
    program = jaxmem.build_program(exp.config)
    params, rest, opt_state = program.init()
    before = jax.tree.map(np.asarray, rest)
    batch = program.sample_batch(jax.random.key(0))
    params, rest, opt_state, loss = program.step(params, rest, opt_state, batch)
    chex.assert_tree_all_finite(loss)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, jax.tree.map(np.asarray, rest))
    assert any(jax.tree.leaves(moved))  # BatchNorm's running statistics were updated


def test_custom_factory_errors_are_config_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain_factory.py").write_text(
        "import examples.custom_model as m\n"
        "def workload(batch_size):\n"
        "    return m.workload(batch_size, width=8, depth=1)\n"
        "def not_a_workload(batch_size):\n"
        "    return 42\n"
    )
    cases = [
        ({"factory": "no_such_module_xyz:f"}, "model.factory: cannot import module"),
        ({"factory": "plain_factory:missing"}, "module plain_factory has no 'missing'"),
        ({"factory": "plain_factory:not_a_workload"}, "must return a jaxmem.models.Workload"),
        ({"factory": "plain_factory:workload", "options": {"colour": 1}}, "model.options"),
    ]
    for model, message in cases:
        config = jaxmem.Experiment.from_dict({"model": {"kind": "custom", **model}}).config
        with pytest.raises(jaxmem.ConfigError, match=message):
            jaxmem.build_program(config)
    (tmp_path / "keyword_factory.py").write_text(
        "import examples.custom_model as m\n"
        "def workload(batch_size, **kw):\n"
        "    assert kw == {'remat_policy': 'full', 'dtype': m.jnp.float32}, kw\n"
        "    return m.workload(batch_size, width=8, depth=1, **kw)\n"
    )
    keyword = jaxmem.Experiment.from_dict(
        {"model": {"kind": "custom", "factory": "keyword_factory:workload"}, "remat": "full"})
    jaxmem.build_program(keyword.config)  # **kw receives remat_policy and dtype
    remat_config = jaxmem.Experiment.from_dict(
        {"model": {"kind": "custom", "factory": "plain_factory:workload"}, "remat": "full"}).config
    with pytest.raises(jaxmem.ConfigError, match="remat.policy: factory .* takes no remat_policy"):
        jaxmem.build_program(remat_config)


def test_gelu_matches_jax_and_its_gradient():
    x = jax.random.normal(jax.random.key(0), (4, 32)) * 3
    g = jax.random.normal(jax.random.key(1), (4, 32))
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x), rtol=1e-6)
    ours = jax.vjp(gelu, x)[1](g)[0]
    ref = jax.vjp(jax.nn.gelu, x)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_masked_softmax_gives_masked_positions_no_probability_and_no_gradient():
    x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    ref = lambda v: jax.nn.softmax(jnp.where(mask, v, -jnp.inf), axis=-1)  # noqa: E731
    np.testing.assert_allclose(softmax(x, mask), ref(x), atol=1e-7)
    g = jax.random.normal(jax.random.key(1), x.shape)
    ours = jax.vjp(lambda v: softmax(v, mask), x)[1](g)[0]
    np.testing.assert_allclose(ours, jax.vjp(ref, x)[1](g)[0], rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(ours)[..., ~np.asarray(mask[0, 0])])


@pytest.mark.parametrize("stack", ["loop", "scan"])
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_gpt_keeps_the_textbook_activations_per_layer(stack, precision):
    """One more layer adds exactly Korthikanti et al.'s (8 + 2r)sbh + as^2b values (no
    dropout), plus what the formula leaves out: LayerNorm statistics (two float32 per row, two
    LayerNorms) and, under bf16-mixed, the layer's bf16 copies of its weights."""
    s, b, h, a, r = 64, 2, 64, 4, 4
    saved = {}
    for layers in (2, 3):
        config = jaxmem.Experiment.from_dict({
            "model": {"kind": "gpt", "vocab_size": 256, "seq_len": s, "num_layers": layers,
                      "d_model": h, "num_heads": a, "mlp_ratio": r, "stack": stack},
            "data": {"batch_size": b}, "precision": precision}).config
        residuals = analytic.program_residuals(jaxmem.build_program(config))
        saved[layers] = sum(x.bytes for x in residuals)
    value = 4 if precision == "fp32" else 2
    expected = analytic.transformer_layer_bytes(s, b, h, a, bytes_per_value=value,
                                                mlp_ratio=r)
    expected += 2 * 2 * s * b * 4  # LayerNorm mean and 1/std, float32, two LayerNorms
    if precision == "bf16-mixed":  # q, k, v, out (4h^2) and the MLP (2rh^2), LN scales (2h)
        expected += ((4 + 2 * r) * h * h + 2 * h) * value
    assert saved[3] - saved[2] == expected


def test_labels_that_do_not_match_the_logits_are_an_error_row_naming_the_shapes(
        tmp_path, monkeypatch):
    """chex at the loss's boundary: labels declared (B, 1) for (B, C) logits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent))
    (tmp_path / "column_labels.py").write_text(
        "import dataclasses, jax, jax.numpy as jnp\n"
        "import examples.custom_model as m\n"
        "def workload(batch_size):\n"
        "    w = m.workload(batch_size, width=8, depth=1)\n"
        "    y = jax.ShapeDtypeStruct((batch_size, 1), jnp.int32)\n"
        "    return dataclasses.replace(w, batch={**w.batch, 'y': y})\n"
    )
    (row,) = jaxmem.run(jaxmem.Experiment.from_dict(
        {"model": {"kind": "custom", "factory": "column_labels:workload"},
         "data": {"batch_size": 4}}))
    assert row.status == "error" and "has shape (4, 1) but expected (4)" in row.error, row.error
