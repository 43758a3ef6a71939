"""Meshes, sharding rules and per-device bytes on 8 fake CPU devices."""

from __future__ import annotations

import fnmatch

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxmem import _convert, _gpu, collectives, sharding, targets
from jaxmem.build import build_program
from jaxmem.config import Config, MeshConfig
from jaxmem.errors import ConfigError
from jaxmem.freeze import path_of
from jaxmem.measure import measure_compile
from jaxmem.program import no_eager_sharding

MODEL = {"kind": "gpt", "stack": "scan", "num_layers": 2, "d_model": 128, "num_heads": 8,
         "vocab_size": 512, "seq_len": 64}


def config(preset: str, mesh: dict, **extra) -> Config:
    return _convert.from_dict(Config, {"model": MODEL, "sharding": preset, "mesh": mesh,
                                       "data": {"batch_size": 8}, **extra})


@pytest.fixture(scope="module")
def measured():
    """Each preset compiled once: ``{preset: (program, record sections)}``."""
    cases = {"none": ("dp", {}), "dp": ("dp", {"data": -1}), "fsdp": ("fsdp", {"fsdp": -1}),
             "tp": ("tp", {"tensor": -1}), "fsdp+tp": ("fsdp+tp", {"fsdp": 2, "tensor": 4})}
    out = {}
    for name, (preset, mesh) in cases.items():
        program = build_program(config(preset, mesh))
        out[name] = (program, measure_compile(program)[1])
    return out


def state_argument_bytes(sections) -> int:
    """Compiled argument bytes of one device without its batch shard."""
    return (sections["compiled"]["argument_bytes"]
            - sections["analytic"]["batch_bytes_per_device"])


def test_fsdp_divides_parameter_and_optimizer_bytes_by_the_device_count(measured):
    _, s = measured["fsdp"]
    a = s["analytic"]
    total = a["param_bytes"] + a["opt_state_bytes"]
    assert state_argument_bytes(s) == pytest.approx(total / 8, rel=0.01)
    assert a["param_bytes_per_device"] == pytest.approx(a["param_bytes"] / 8, rel=0.01)
    assert a["opt_state_bytes_per_device"] == pytest.approx(a["opt_state_bytes"] / 8, rel=0.01)


def test_dp_keeps_full_copies_on_every_device(measured):
    _, s = measured["dp"]
    a = s["analytic"]
    assert state_argument_bytes(s) == a["param_bytes"] + a["opt_state_bytes"]
    assert a["batch_bytes_per_device"] == a["batch_bytes"] // 8


def test_tp_splits_attention_and_mlp_weights_by_the_tensor_axis(measured):
    program, _ = measured["tp"]
    expected = {"*/attn/query/kernel": P(None, None, "tensor"),  # layers x D x HK
                "*/attn/out/kernel": P(None, "tensor", None),  # layers x HK x D
                "*/mlp/up/kernel": P(None, None, "tensor"),
                "*/mlp/down/kernel": P(None, "tensor", None),
                "trunk/embed/embedding": P("tensor", None)}  # vocab x D
    leaves = jax.tree_util.tree_leaves_with_path(program.params)
    for pattern, spec in expected.items():
        (x,) = [x for p, x in leaves if fnmatch.fnmatchcase(path_of(p), pattern)]
        assert x.sharding.spec == spec, pattern
        shard = x.sharding.shard_shape(x.shape)
        assert [a // b for a, b in zip(x.shape, shard, strict=True)].count(8) == 1


def test_fsdp_and_tp_compose(measured):
    program, s = measured["fsdp+tp"]
    specs = {path_of(p): x.sharding.spec
             for p, x in jax.tree_util.tree_leaves_with_path(program.params)}
    assert specs["trunk/blocks/blocks/mlp/up/kernel"] == P(None, "fsdp", "tensor")
    assert specs["trunk/blocks/blocks/mlp/down/kernel"] == P(None, "tensor", "fsdp")
    a = s["analytic"]
    assert a["param_bytes_per_device"] < a["param_bytes"] / 6


def test_optimizer_state_follows_its_parameter(measured):
    program, _ = measured["fsdp"]
    params = {path_of(p): x.sharding for p, x in
              jax.tree_util.tree_leaves_with_path(program.params)}
    mu = [(path_of(p), x) for p, x in jax.tree_util.tree_leaves_with_path(program.opt_state)
          if "/mu/" in path_of(p)]
    assert mu
    for path, x in mu:
        assert x.sharding == params[path.split("/mu/", 1)[1]]


def test_collectives_are_read_from_the_hlo(measured):
    dp, fsdp, none = (measured[k][1]["compiled"] for k in ("dp", "fsdp", "none"))
    assert none["collective_count"] == 0
    assert dp["all_reduce_count"] >= 1 and dp["all_gather_count"] == 0
    assert fsdp["all_gather_count"] >= 1
    assert fsdp["collective_bytes"] > 0


def test_collective_bytes_of_one_all_gather():
    mesh = sharding.make_mesh(MeshConfig(fsdp=-1), jax.devices())
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32,
                             sharding=jax.sharding.NamedSharding(mesh, P("fsdp")))
    out = jax.sharding.NamedSharding(mesh, P())
    compiled = jax.jit(lambda a: a * 2, out_shardings=out).lower(x).compile()
    counts = collectives.of_compiled(compiled)
    assert counts["all-gather"] == {"count": 1, "bytes": 64 * 32 * 4}


def test_activations_are_constrained_only_under_rules():
    mesh = sharding.make_mesh(MeshConfig(data=-1), jax.devices())
    x = jnp.ones((8, 4, 16))

    def f(x):
        return sharding.constrain(x, ("batch", "length", "embed")) * 2

    assert "sharding_constraint" not in str(jax.make_jaxpr(f)(x))
    ruled = sharding.with_rules(f, mesh, sharding.preset_rules("dp"))
    assert "sharding_constraint" in str(jax.make_jaxpr(ruled)(x))


def test_constrain_activations_false_leaves_the_step_to_propagation():
    """``sharding.constrain_activations: false``: no activation is constrained in the step
    (with the default, every block's are)."""
    def constraints(**sharding_section):
        program = build_program(config({"preset": "fsdp", **sharding_section}, {"fsdp": -1}))
        return str(program.step.trace(*program.abstract_args).jaxpr).count("sharding_constraint")

    assert constraints() > 10 and constraints(constrain_activations=False) == 0


@pytest.mark.parametrize(("logical", "shape", "preset", "mesh", "spec"), [
    (("embed", "mlp"), (128, 512), "dp", {"data": -1}, P(None, None)),
    (("embed", "mlp"), (128, 512), "fsdp", {"fsdp": -1}, P(None, "fsdp")),  # largest dim
    (("embed", "mlp"), (128, 512), "tp", {"tensor": -1}, P(None, "tensor")),
    (("layers", "embed"), (8, 128), "fsdp", {"fsdp": -1}, P(None, "fsdp")),  # never layers
    (("heads",), (12,), "tp", {"tensor": -1}, P(None)),  # 12 heads do not split 8 ways
    (None, (), "fsdp", {"fsdp": -1}, P()),  # scalars stay whole
    (("vocab", "embed"), (50304, 768), "fsdp+tp", {"fsdp": 2, "tensor": 4},
     P("tensor", "fsdp")),
])
def test_param_spec(logical, shape, preset, mesh, spec):
    m = sharding.make_mesh(MeshConfig(**mesh), jax.devices())
    assert sharding.param_spec(logical, shape, m, sharding.preset_rules(preset)) == spec


def test_rule_overrides_and_user_parameter_axes():
    c = config("tp", {"tensor": -1}, **{"sharding": {"preset": "tp", "rules": [["mlp"]]}})
    program = build_program(c)
    specs = {path_of(p): x.sharding.spec
             for p, x in jax.tree_util.tree_leaves_with_path(program.params)}
    assert specs["trunk/blocks/blocks/mlp/up/kernel"] == P(None, None, None)
    assert specs["trunk/blocks/blocks/attn/query/kernel"] == P(None, None, "tensor")
    c = config("tp", {"tensor": -1}, **{"sharding": {
        "preset": "tp", "param_axes": [["trunk/embed/embedding", "_", "mlp"]]}})
    specs = {path_of(p): x.sharding.spec
             for p, x in jax.tree_util.tree_leaves_with_path(build_program(c).params)}
    assert specs["trunk/embed/embedding"] == P(None, "tensor")  # not the model's vocab split


def test_variables_annotated_with_flax_partitioning_are_honoured():
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
    with no_eager_sharding():
        model = nnx.eval_shape(lambda: nnx.Linear(64, 256, kernel_init=init,
                                                  rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    meta = sharding.metadata_axes(state)
    assert meta == {"kernel": ("embed", "mlp")}
    mesh = sharding.make_mesh(MeshConfig(tensor=-1), jax.devices())
    specs = sharding.param_shardings(state, mesh, sharding.preset_rules("tp"), metadata=meta)
    assert specs["kernel"].spec == P(None, "tensor")


def test_shard_places_a_real_model():
    mesh = sharding.make_mesh(MeshConfig(fsdp=-1), jax.devices())
    model = sharding.shard(nnx.Linear(16, 64, rngs=nnx.Rngs(0)), mesh,
                           sharding.preset_rules("fsdp"))
    kernel = model.kernel[...]
    assert kernel.sharding.spec == P(None, "fsdp")
    chex.assert_shape(kernel.addressable_shards[0].data, (16, 8))


@pytest.mark.parametrize(("mesh", "message"), [
    ({"data": 3}, "spans 3 devices but the target has 8"),
    ({"data": 3, "fsdp": -1}, "do not divide the target's 8 devices"),
    ({"data": 16}, "spans 16 devices"),
])
def test_mesh_sizes_must_fit_the_devices(mesh, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(MeshConfig(**mesh), jax.devices())


def test_one_device_mesh_and_free_axis():
    assert sharding.make_mesh(MeshConfig(), jax.devices()).devices.size == 1
    assert dict(sharding.make_mesh(MeshConfig(fsdp=2, tensor=-1), jax.devices()).shape) == {
        "data": 1, "fsdp": 2, "tensor": 4}


@pytest.mark.parametrize(("raw", "message"), [
    ({"mesh": {"data": -1, "fsdp": -1}}, "mesh.fsdp: only one axis can be -1"),
    ({"mesh": {"tensor": 0}}, "mesh.tensor: must be positive"),
    ({"sharding": "zero3"}, "sharding.preset: unknown sharding preset"),
    ({"sharding": "fsdp"}, "sharding.preset: splits the training state over mesh.fsdp"),
    ({"sharding": {"rules": [["mlp", "model"]]}}, "unknown mesh axis"),
    ({"sharding": {"rules": [["hidden", "tensor"]]}}, "unknown logical axis"),
    ({"mesh": {"data": 3}}, "data.batch_size: must be divisible by mesh.data x mesh.fsdp"),
])
def test_bad_sharding_config(raw, message):
    with pytest.raises(ConfigError, match=message):
        _convert.from_dict(Config, raw)


def test_heads_must_split_over_the_tensor_axis():
    c = _convert.from_dict(Config, {"sharding": "tp", "mesh": {"tensor": -1},
                                    "model": {"num_heads": 4}})
    with pytest.raises(ConfigError, match="model.num_heads: must be divisible by the 8"):
        build_program(c)


def test_cpu_targets():
    assert len(targets.get("cpu:4").devices()) == 4
    with pytest.raises(ConfigError, match="needs 64 CPU devices but this process has 8"):
        targets.get("cpu:64").devices()


@pytest.mark.parametrize(("name", "message"), [
    ("tpu:v9:2x2", "expected tpu:<v4|v5e|v5p|v6e>:<AxB"),
    ("gpu:x8", "expected gpu:<kind>x<N>"),
    ("gpu:rtx9090x8", "unknown GPU kind"),
    ("cloud", "unknown target"),
])
def test_bad_target_names(name, message):
    with pytest.raises(ConfigError, match=message):
        targets.validate(name)


def test_libtpu_messages_give_the_available_hbm():
    assert targets.available_hbm(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (1.00T) exceeds available HBM (15.75G).") == round(15.75 * 2**30)
    assert targets.available_hbm("E1000: CompileTimeHbmOom: ... Used 95.74G of 95.74G hbm. "
                                 "Exceeded hbm capacity by 3.5K.") == round(95.74 * 2**30)
    assert targets.available_hbm("INTERNAL: something else") is None


def test_gpu_targets_plan_against_the_allocators_share():
    gpu = targets.get("gpu:h100x8")
    full = _gpu.GPU_KINDS["h100"].memory_bytes
    assert gpu.usable_memory().bytes == int(full * 0.75)  # JAX's default fraction
    assert gpu.usable_memory(0.95).bytes == int(full * 0.95)
    assert "measure.mem_fraction" in gpu.usable_memory(0.95).source
    assert targets.get("cpu:8").usable_memory().bytes is None


@pytest.mark.tpu_target
def test_tpu_usable_memory_is_what_libtpu_lets_a_program_use():
    """Usable memory is libtpu's, not the HBM on the box: a program just under it compiles,
    one just over it is refused."""
    pytest.importorskip("libtpu", reason="needs the tpu-targets extra")
    target = targets.get("tpu:v5e:2x2")
    usable = target.usable_memory()
    assert "libtpu" in usable.source
    assert usable.bytes < 16 * 2**30  # libtpu keeps some of the chip's 16 GiB
    mesh = jax.sharding.Mesh(target.devices()[:1], ("x",))
    one = jax.sharding.NamedSharding(mesh, P())

    def compile_output(nbytes: int) -> None:
        jax.jit(lambda: jnp.zeros((nbytes,), jnp.int8), out_shardings=one).lower().compile()

    compile_output(usable.bytes - 64 * 2**20)
    with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
        compile_output(usable.bytes + 64 * 2**20)
