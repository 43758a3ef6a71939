"""Memory techniques as experiment dimensions: remat catalogue and granularity, precision and
loss scaling, accumulation, freezing, optimizers, offload."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmem
from jaxmem import grads, remat
from jaxmem.cli import cli
from jaxmem.errors import ConfigError, Unsupported
from jaxmem.loss_scale import DynamicLossScale
from jaxmem.models import CHECKPOINT_NAMES
from jaxmem.residuals import residual_report

QUICKSTART = "experiments/quickstart.yaml"
TINY_GPT = {"kind": "gpt", "vocab_size": 64, "seq_len": 16, "num_layers": 4, "d_model": 32,
            "num_heads": 2, "stack": "scan"}


def one(overrides, base=QUICKSTART):
    """The single record of the quickstart (fp32, remat none unless overridden)."""
    exp = jaxmem.Experiment.from_yaml(base, ["sweep.remat=[none]", "sweep.precision=[fp32]",
                                             *overrides])
    (record,) = jaxmem.run(exp)
    assert record.ok, record.error
    return record


def tiny(**sections):
    return jaxmem.Experiment.from_dict({"model": TINY_GPT, "data": {"batch_size": 8},
                                        **sections}).config


# --- remat ------------------------------------------------------------------------------------

STATIC_NAMES = [n for n in remat.POLICIES if not remat.POLICIES[n].offloads]
PARAMETRIC_NAMES = ["save:query+key", "except:mlp_pre_act+mlp_post_act",
                    "offload:mlp_post_act", "offload_dot_with_no_batch_dims"]


@pytest.fixture(scope="module")
def saved_without_remat():
    """``analytic.residual_bytes`` of the two-layer quickstart, fp32, remat none."""
    return one(["model.num_layers=2"]).analytic["residual_bytes"]


#: what each name-based policy may keep, by checkpoint name
ALLOWED = {"save:query+key": {"query", "key"}, "minimal": set(remat.MINIMAL_NAMES),
           "offload:mlp_post_act": {"mlp_post_act"}}


@pytest.mark.parametrize("name", STATIC_NAMES + PARAMETRIC_NAMES)
def test_every_remat_name_runs_and_changes_what_is_saved(cli_runner, tmp_path, name,
                                                         saved_without_remat):
    result = cli_runner.invoke(cli, ["run", QUICKSTART, "--set", f"remat.policy={name}",
                                     "--set", "sweep.precision=[fp32]", "--set",
                                     "model.num_layers=2", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    (row,) = jaxmem.read_results(tmp_path)
    assert row.ok and row.config["remat"]["policy"] == name
    saved = row.analytic["residual_bytes"]
    if name in ("none", "everything_saveable"):  # nothing is recomputed
        assert saved == saved_without_remat
    elif name.startswith("except:"):
        # JAX's save_anything_except_these_names refuses only the name itself, not the value
        # it tags: the unnamed producer is saved instead, so nothing is gained on this model
        assert saved <= saved_without_remat
    else:
        assert saved < saved_without_remat
    if name in ALLOWED:
        config = jaxmem.Experiment.from_yaml(QUICKSTART, [
            f"remat.policy={name}", "sweep.precision=[fp32]",
            "model.num_layers=2", "model.stack=loop"]).config
        residuals, _ = residual_report(config)
        named = {r.what for r in residuals} & set(CHECKPOINT_NAMES)
        # only these names (offloaded ones leave the device, unnamed)
        assert named <= ALLOWED[name] and (named or remat.get(name).offloads)


def test_remat_names_are_checked_against_the_model():
    with pytest.raises(ConfigError, match="remat.policy: names checkpoints model kind 'gpt' does "
                                          "not tag \\(querry\\)"):
        jaxmem.Experiment.from_dict({"remat": "save:querry"})
    with pytest.raises(ConfigError, match="model kind 'mlp' does not tag"):
        jaxmem.Experiment.from_dict({"model": {"kind": "mlp"}, "remat": "minimal"})
    with pytest.raises(ConfigError, match="remat.policy: expected save:<name>"):
        jaxmem.Experiment.from_dict({"remat": "save:"})


def test_remat_apply_wraps_a_module_and_a_function():
    layer = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    wrapped = remat.apply(layer, "full")
    x = jnp.ones((4, 8))
    np.testing.assert_allclose(wrapped(x), layer(x))
    graphdef, state = nnx.split(wrapped)
    jaxpr = str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x).sum())(state, x))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    g_wrapped = nnx.grad(lambda m, x: m(x).sum())(wrapped, x)
    g_plain = nnx.grad(lambda m, x: m(x).sum())(layer, x)
    np.testing.assert_allclose(g_wrapped["module"]["kernel"][...], g_plain["kernel"][...])
    fn = remat.apply(lambda x: jnp.sin(x) * 2, "dots")
    np.testing.assert_allclose(jax.grad(lambda x: fn(x).sum())(x), 2 * jnp.cos(x))


class KeywordBlock(nnx.Module):
    """A block called the way Gemma's are: the input, then keyword arrays and flags."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x, *, segment_pos, attn_mask=None, deterministic: bool = True):
        h = jnp.tanh(self.up(x + segment_pos[..., None].astype(x.dtype)))
        if attn_mask is not None:
            h = h * attn_mask[..., None]
        out = x + self.down(jax.nn.gelu(h))
        return out if deterministic else -out


class KeywordModel(nnx.Module):
    def __init__(self, policy: str, depth: int = 3, width: int = 32):
        rngs = nnx.Rngs(0)
        self.blocks = nnx.List([remat.apply(KeywordBlock(width, rngs), policy)
                                for _ in range(depth)])

    def __call__(self, x, pos, mask):
        for block in self.blocks:
            x = block(x, segment_pos=pos, attn_mask=mask, deterministic=True)
        return x


def test_remat_apply_takes_blocks_called_with_keyword_arguments():
    x = jnp.ones((4, 16, 32))
    pos = jnp.broadcast_to(jnp.arange(16), (4, 16))
    mask = jnp.ones((4, 16))
    saved, grads = {}, {}
    for policy in ("none", "full"):
        model = KeywordModel(policy)
        graphdef, state = nnx.split(model)

        def loss(s, x):
            return jnp.mean(nnx.merge(graphdef, s)(x, pos, mask) ** 2)

        saved[policy] = sum(r.bytes for r in jaxmem.analytic.saved_residuals(loss, state, x))
        grads[policy] = jax.grad(loss)(state, x)
    assert saved["full"] < saved["none"] / 4  # full keeps each block's input only
    chex.assert_trees_all_close(jax.tree.leaves(grads["full"]), jax.tree.leaves(grads["none"]),
                                rtol=1e-5, atol=1e-6)


def saved_bytes(config):
    return sum(r.bytes for r in jaxmem.analytic.program_residuals(jaxmem.build_program(config)))


def test_remat_granularity_every_k_and_nested():
    deep = dict(TINY_GPT, num_layers=16)

    def cfg(**remat_section):
        return jaxmem.Experiment.from_dict({"model": deep, "remat": remat_section}).config

    none, full = saved_bytes(cfg(policy="none")), saved_bytes(cfg(policy="full"))
    every2 = saved_bytes(cfg(policy="full", every=2))
    nested = saved_bytes(cfg(policy="full", nested=True))
    assert full < every2 < none  # half the blocks keep everything
    assert nested < full  # only sqrt(L) group inputs survive the forward
    loop = {policy: saved_bytes(jaxmem.Experiment.from_dict(
        {"model": dict(deep, stack="loop"), "remat": section}).config)
        for policy, section in [("none", "none"), ("full", "full"),
                                ("every2", {"policy": "full", "every": 2})]}
    assert loop["full"] < loop["every2"] < loop["none"]


def test_remat_granularity_keeps_the_gradient():
    reference = None
    for section in ({"policy": "none"}, {"policy": "full", "every": 2},
                    {"policy": "minimal", "nested": True}):
        program = jaxmem.build_program(tiny(remat=section))
        params, rest, _ = program.init()
        batch = program.sample_batch(jax.random.key(0))
        g = jax.grad(lambda p: program.objective(p, rest, batch)[0])(params)
        if reference is None:
            reference = g
        else:
            chex.assert_trees_all_close(g, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ({"remat": {"policy": "full", "nested": True}, "model": dict(TINY_GPT, stack="loop")},
     "remat.nested: needs a scanned stack"),
    ({"remat": {"policy": "full", "nested": True}, "model": dict(TINY_GPT, num_layers=7)},
     "remat.nested: needs a layer count with a divisor"),
    ({"remat": {"policy": "full", "every": 3}}, "remat.every: must divide the 4 scanned layers"),
    ({"remat": {"policy": "full", "every": 2},
      "model": {"kind": "custom", "factory": "examples.custom_model:workload"}},
     "remat.every: needs a built-in model"),
])
def test_remat_combinations_that_cannot_work(bad, message):
    with pytest.raises(ConfigError, match=message):
        jaxmem.Experiment.from_dict({"model": TINY_GPT, **bad})


def test_residuals_command_names_the_saved_values(cli_runner):
    result = cli_runner.invoke(cli, ["residuals", QUICKSTART, "--set", "remat=minimal",
                                     "--set", "sweep.precision=[bf16-mixed]"])
    assert result.exit_code == 0, result.output
    for name in ("query", "key", "value", "attn_out"):
        assert f"│ {name} " in result.stdout
    assert "attention.py:" in result.stdout and "bfloat16" in result.stdout
    assert "mlp_pre_act" not in result.stdout  # recomputed, not saved
    assert "total " in result.stdout


# --- precision and loss scaling ---------------------------------------------------------------

def test_bf16_policy_halves_parameter_and_optimizer_bytes():
    fp32, bf16 = one([]), one(["precision=bf16"])
    assert bf16.analytic["param_bytes"] * 2 == fp32.analytic["param_bytes"]
    assert bf16.analytic["opt_state_bytes"] < 0.51 * fp32.analytic["opt_state_bytes"]


def test_loss_scaling_keeps_gradients_that_fp16_flushes_to_zero():
    x = jnp.linspace(0.5, 1.5, 1024)

    def objective(p, rest, batch):
        h = batch["x"].astype(jnp.float16) * p["w"].astype(jnp.float16)
        # a small loss: its cotangents (~1e-9) are below float16's smallest subnormal (6e-8)
        return 1e-6 * jnp.mean(jnp.square(h).astype(jnp.float32)), rest

    params = {"w": jnp.float32(1.0)}
    _, _, plain = grads.value_and_grad(objective, params, {}, {"x": x})
    _, _, scaled = grads.value_and_grad(objective, params, {}, {"x": x},
                                        scale=jnp.float32(2.0**15))
    _, _, exact = grads.value_and_grad(
        lambda p, r, b: (1e-6 * jnp.mean(jnp.square(b["x"] * p["w"])), r), params, {}, {"x": x})
    assert float(plain["w"]) == 0.0
    assert float(scaled["w"]) == pytest.approx(float(exact["w"]), rel=2e-2)


def test_loss_scale_grows_and_backs_off():
    ls = DynamicLossScale(init_scale=8.0, growth_interval=2)
    s = ls.init()
    s = ls.adjust(s, jnp.bool_(True))
    assert (float(s.scale), int(s.good_steps)) == (8.0, 1)
    s = ls.adjust(s, jnp.bool_(True))
    assert (float(s.scale), int(s.good_steps)) == (16.0, 0)
    s = ls.adjust(s, jnp.bool_(False))
    assert (float(s.scale), int(s.good_steps)) == (8.0, 0)


def test_fp16_mixed_trains_with_finite_loss():
    program = jaxmem.build_program(tiny(precision="fp16-mixed"))
    params, rest, opt_state = program.init()
    batch = program.sample_batch(jax.random.key(0))
    losses = []
    for _ in range(4):
        params, rest, opt_state, loss = program.step(params, rest, opt_state, batch)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    _, ls_state = opt_state
    assert float(ls_state.scale) == 2.0**15 and int(ls_state.good_steps) == 4
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_overflowing_step_is_skipped():
    program = jaxmem.build_program(tiny(precision="fp16-mixed"))
    params, rest, (tx_state, ls_state) = program.init()
    batch = program.sample_batch(jax.random.key(0))
    huge = ls_state._replace(scale=jnp.float32(1e30))  # the scaled loss overflows float16
    before = jax.tree.map(np.asarray, params)
    params, rest, (tx_state, ls_state), _ = program.step(params, rest, (tx_state, huge), batch)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, params), before)
    assert float(ls_state.scale) == pytest.approx(5e29)


# --- gradient accumulation --------------------------------------------------------------------

def test_microbatches_give_the_same_update_with_less_temp():
    updates = {}
    for k in (1, 4):
        program = jaxmem.build_program(tiny(data={"batch_size": 8, "microbatches": k},
                                            optimizer={"name": "sgd", "learning_rate": 0.1}))
        params, rest, opt_state = program.init()
        batch = program.sample_batch(jax.random.key(3))
        new, _, _, loss = program.step(params, rest, opt_state, batch)
        updates[k] = (jax.tree.map(np.asarray, new), float(loss))
    chex.assert_trees_all_close(updates[1][0], updates[4][0], rtol=1e-5, atol=1e-7)
    assert updates[1][1] == pytest.approx(updates[4][1], rel=1e-5)
    full, micro = one([]), one(["data.microbatches=4"])
    assert micro.compiled["temp_bytes"] < 0.5 * full.compiled["temp_bytes"]


# --- freezing ---------------------------------------------------------------------------------

def test_freezing_half_the_blocks_halves_block_optimizer_state():
    full = one(["model.stack=loop"])
    frozen = one(["model.stack=loop", "freeze.blocks=2"])
    assert 0.45 < frozen.analytic["opt_state_bytes"] / full.analytic["opt_state_bytes"] < 0.6
    program = jaxmem.build_program(jaxmem.Experiment.from_yaml(
        QUICKSTART, ["model.stack=loop", "freeze.blocks=2"]).config)
    mask = jaxmem.freeze.frozen_mask(program.params, [f"trunk/blocks/blocks/{i}/*"
                                                      for i in range(2)])
    frozen_bytes = sum(jaxmem.analytic.tree_bytes(p) for p, m in
                       zip(jax.tree.leaves(program.params), jax.tree.leaves(mask), strict=True)
                       if m)
    # adamw keeps two moments per trainable parameter: exactly the frozen ones are gone
    assert full.analytic["opt_state_bytes"] - frozen.analytic["opt_state_bytes"] == 2 * frozen_bytes


def test_frozen_parameters_do_not_move():
    config = jaxmem.Experiment.from_dict({"model": dict(TINY_GPT, stack="loop"),
                                          "freeze": {"blocks": 1, "embeddings": True}}).config
    program = jaxmem.build_program(config)
    params, rest, opt_state = program.init()
    before = jax.tree.map(np.asarray, params)
    params, *_ = program.step(params, rest, opt_state, program.sample_batch(jax.random.key(0)))
    after = jax.tree.map(np.asarray, params)
    for path, a, b in zip(jaxmem.freeze.param_paths(before), jax.tree.leaves(before),
                          jax.tree.leaves(after), strict=True):
        frozen = path.startswith(("trunk/blocks/blocks/0/", "trunk/embed/", "trunk/pos/"))
        assert np.array_equal(a, b) == frozen, path


@pytest.mark.parametrize("bad, message", [
    ({"freeze": {"blocks": 2}}, "freeze.blocks: needs model.stack=loop"),
    ({"freeze": {"patterns": ["nothing/*"]}}, "freeze.patterns: matches no parameter"),
    ({"freeze": {"embeddings": True}, "model": {"kind": "mlp"}},
     "freeze.embeddings: model kind 'mlp' has no such preset"),
])
def test_freeze_errors_stop_the_sweep_before_it_runs(bad, message):
    """Presets are checked with the configuration, patterns against the model's parameters
    before anything compiles (tests/test_refusals.py shows the CLI's exit 2)."""
    with pytest.raises(ConfigError, match=message):
        jaxmem.run(jaxmem.Experiment.from_dict({"model": TINY_GPT, **bad}))


# --- optimizers -------------------------------------------------------------------------------

def test_optimizer_state_bytes_by_optimizer():
    state = {name: one([f"optimizer={name}"]).analytic["opt_state_bytes"]
             for name in ("sgd", "adafactor", "lion", "adamw")}
    params = one([]).analytic["param_bytes"]
    assert state["sgd"] == 0
    assert state["adafactor"] < 0.05 * params  # factored second moments
    assert state["lion"] == pytest.approx(params, rel=1e-3)  # one moment
    assert state["adamw"] == pytest.approx(2 * params, rel=1e-3)  # two moments
    assert one(["optimizer.state_dtype=bfloat16"]).analytic["opt_state_bytes"] == pytest.approx(
        params, rel=1e-3)


# --- offload ----------------------------------------------------------------------------------

def test_offload_rows_on_cpu_say_host_memory_is_not_separated():
    for overrides in (["optimizer.offload=true"], ["remat=offload:mlp_post_act"]):
        record = one(overrides)
        assert any("does not separate pinned host memory" in n for n in record.notes)


def test_backend_without_memory_kinds_gives_an_unsupported_row(monkeypatch):
    def no_host(mesh, what):
        raise Unsupported(f"{what} is not supported on fakeu")

    monkeypatch.setattr(jaxmem.sharding, "require_host_memory", no_host)
    exp = jaxmem.Experiment.from_dict({"model": TINY_GPT, "optimizer": {"offload": True},
                                       "sweep": {"remat": ["none", "offload:mlp_out"]}})
    records = jaxmem.run(exp)
    assert [r.status for r in records] == ["unsupported", "unsupported"]
    assert "optimizer-state offload is not supported on fakeu" in records[0].error


@pytest.mark.tpu_target
def test_offload_shows_host_bytes_on_a_tpu_target():
    pytest.importorskip("libtpu", reason="needs the tpu-targets extra")
    opt = one(["target=tpu:v5e:2x2", "optimizer.offload=true", "remat=full"])
    acts = one(["target=tpu:v5e:2x2", "remat=offload:mlp_post_act+attn_out"])
    state = opt.analytic["opt_state_bytes"]
    assert opt.compiled["host_argument_bytes"] == pytest.approx(state, rel=0.01)
    assert acts.compiled["host_temp_bytes"] > 0


def test_remat_outside_loops_is_read_from_the_program_for_any_model(monkeypatch):
    """The CPU caveat about remat in a Python loop holds for custom models too: it is read
    from the differentiated program, not from a built-in model's settings."""
    monkeypatch.chdir(jaxmem.__file__.rsplit("/jaxmem/", 1)[0])  # examples/ importable
    custom = {"model": {"kind": "custom", "factory": "examples.custom_model:workload",
                        "options": {"width": 32, "depth": 3}}, "data": {"batch_size": 8}}
    loop_note = "checkpointed regions outside any loop"
    records = jaxmem.run(jaxmem.Experiment.from_dict({**custom,
                                                      "sweep": {"remat": ["none", "full"]}}))
    assert [any(loop_note in n for n in r.notes) for r in records] == [False, True]
    assert "3 checkpointed regions" in " ".join(records[1].notes)
    scanned = one(["remat=full", "model.num_layers=2"])  # the quickstart scans its blocks
    assert not any(loop_note in n for n in scanned.notes)
