"""jaxmem.compiled_memory equals raw JAX; records carry every number with its source."""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmem
from jaxmem.compiled import MemoryReport
from jaxmem.record import FIELDS


def mlp_loss(w1, w2, x):
    h = jnp.tanh(x @ w1)
    return jnp.mean((h @ w2) ** 2)


def grad_step(params, x):
    grads = jax.grad(lambda p: mlp_loss(p["w1"], p["w2"], x))(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


def _raw(fn, *args):
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return jitted.lower(*args).compile().memory_analysis()


FIELDS_PAIRS = [
    ("argument_bytes", "argument_size_in_bytes"),
    ("output_bytes", "output_size_in_bytes"),
    ("alias_bytes", "alias_size_in_bytes"),
    ("temp_bytes", "temp_size_in_bytes"),
    ("generated_code_bytes", "generated_code_size_in_bytes"),
    ("host_argument_bytes", "host_argument_size_in_bytes"),
    ("host_output_bytes", "host_output_size_in_bytes"),
    ("host_alias_bytes", "host_alias_size_in_bytes"),
    ("host_temp_bytes", "host_temp_size_in_bytes"),
    ("host_generated_code_bytes", "host_generated_code_size_in_bytes"),
]


@pytest.mark.parametrize("abstract", [True, False], ids=["shapes", "arrays"])
@pytest.mark.parametrize("donate", [False, True], ids=["plain", "donated"])
def test_compiled_memory_equals_raw_jax(abstract, donate):
    shapes = {"w1": (64, 256), "w2": (256, 32)}
    if abstract:
        params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
        x = jax.ShapeDtypeStruct((128, 64), jnp.float32)
    else:
        params = {k: jnp.ones(s, jnp.float32) for k, s in shapes.items()}
        x = jnp.ones((128, 64), jnp.float32)
    fn = jax.jit(grad_step, donate_argnums=0) if donate else grad_step
    report = jaxmem.compiled_memory(fn, params, x)
    raw = _raw(fn, params, x)
    for ours, theirs in FIELDS_PAIRS:
        assert getattr(report, ours) == getattr(raw, theirs), ours
    assert report.total_bytes == (raw.argument_size_in_bytes + raw.output_size_in_bytes
                                  + raw.temp_size_in_bytes - raw.alias_size_in_bytes)
    param_bytes = 4 * (64 * 256 + 256 * 32)
    assert report.argument_bytes == param_bytes + 4 * 128 * 64
    assert report.alias_bytes == (param_bytes if donate else 0)
    assert report.flops > 2 * 128 * 64 * 256  # at least the first matmul
    assert (report.platform, report.num_devices) == ("cpu", 1)


def test_report_is_per_device_under_sharding():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = jax.ShapeDtypeStruct((8 * 1024, 256), jnp.float32, sharding=sharding)
    report = jaxmem.compiled_memory(lambda a: jnp.sin(a) * 2, x)
    assert report.num_devices == 8
    assert report.argument_bytes == 1024 * 256 * 4  # one shard per device


def test_memory_report_serialises():
    report = jaxmem.compiled_memory(jnp.sin, jax.ShapeDtypeStruct((16,), jnp.float32))
    d = report.to_dict()
    assert d["total_bytes"] == report.total_bytes
    assert MemoryReport(**{k: v for k, v in d.items() if k != "total_bytes"}) == report
    assert "argument" in str(report)


def test_record_fields_are_all_documented(quickstart_records):
    for record in quickstart_records.values():
        for key in record.flat():
            if not key.startswith("config."):
                assert key in FIELDS, f"{key} is missing from jaxmem.record.FIELDS"


def test_records_carry_numbers_by_source(quickstart_records):
    r = quickstart_records["remat=none,precision=fp32"]
    assert r.ok and r.mode == "compile"
    assert r.env["backend"] == "cpu" and r.env["device_count"] == 1
    assert r.env["jax_version"] == jax.__version__
    for key in ("argument_bytes", "temp_bytes", "total_bytes", "flops", "compile_seconds"):
        assert r.compiled[key] > 0, key
    assert r.compiled["total_bytes"] == (r.compiled["argument_bytes"] + r.compiled["output_bytes"]
                                         + r.compiled["temp_bytes"] - r.compiled["alias_bytes"])
    for key in ("param_count", "param_bytes", "opt_state_bytes", "batch_bytes", "residual_bytes"):
        assert r.analytic[key] > 0, key
    assert r.runtime == {}


def test_donated_state_is_aliased(quickstart_records):
    r = quickstart_records["remat=none,precision=fp32"]
    state_bytes = r.analytic["param_bytes"] + r.analytic["opt_state_bytes"]
    # params and optimizer state are donated and updated in place
    np.testing.assert_allclose(r.compiled["alias_bytes"], state_bytes, rtol=1e-3)
    chex.assert_scalar_positive(r.compiled["argument_bytes"] - state_bytes)  # + the batch


def test_data_parallel_mesh_splits_only_the_batch():
    base = {"model": {"kind": "mlp", "in_features": 256, "hidden": [512], "out_features": 8},
            "data": {"batch_size": 64}}
    one, eight = (jaxmem.run(jaxmem.Experiment.from_dict({**base, "mesh": {"data": n}}))[0]
                  for n in (1, -1))
    assert (one.env["device_count"], eight.env["device_count"]) == (1, 8)
    state = one.analytic["param_bytes"] + one.analytic["opt_state_bytes"]
    batch = one.analytic["batch_bytes"]
    assert one.compiled["argument_bytes"] == state + batch
    # parameters and optimizer state replicated, the batch split 8 ways
    assert eight.compiled["argument_bytes"] == state + batch // 8


GPT = {"kind": "gpt", "vocab_size": 512, "seq_len": 64, "num_layers": 2, "d_model": 64,
       "num_heads": 2}


@pytest.mark.parametrize("raw", [
    {"model": GPT, "remat": "none"},
    {"model": {**GPT, "stack": "loop"}, "remat": "full", "precision": "bf16-mixed",
     "target": "cpu:8", "sharding": "fsdp", "mesh": {"fsdp": 8}},
    {"model": {"kind": "cnn", "image_size": 32, "channels": [16, 32]}, "remat": "dots"},
], ids=["scan", "loop-fsdp", "cnn"])
def test_llvm_optimisation_level_leaves_the_buffers_alone(raw):
    """The suite compiles XLA:CPU at -O0 (conftest.py), a third faster; every figure is the same
    as at XLA's default level, which users compile at (a compile option overrides the flag)."""
    assert "--xla_backend_optimization_level=0" in os.environ["XLA_FLAGS"]
    program = jaxmem.build_program(jaxmem.Experiment.from_dict(raw).config)
    lowered = program.step.lower(*program.abstract_args)
    fast = lowered.compile().memory_analysis()
    default = lowered.compile(compiler_options={"xla_backend_optimization_level": 3}
                              ).memory_analysis()
    for _, field in FIELDS_PAIRS:  # XLA:CPU reports no machine-code size (0 at both)
        assert getattr(fast, field) == getattr(default, field), field
    assert fast.peak_memory_in_bytes == default.peak_memory_in_bytes
