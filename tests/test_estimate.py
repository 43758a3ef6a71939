"""``jaxmem.estimate``: shape formulas against the model, the jaxpr and the compiler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from estimate_cases import CNN, GPT, compiled_total, estimate_module, make_config, set_backend
from flax import nnx

import jaxmem
from jaxmem import analytic, param_memory
from jaxmem.build import build_program
from jaxmem.cli import cli
from jaxmem.compiled import compiled_memory
from jaxmem.errors import Unsupported
from jaxmem.estimate import ARGUMENT_TERMS, estimate
from jaxmem.sharding import path_of
from jaxmem.sizing import Sizer

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
MODELS = {
    "gpt-loop": GPT,
    "gpt-scan-untied": {**GPT, "stack": "scan", "tie_embeddings": False},
    "llama-scan-gqa": {"kind": "llama", "vocab_size": 512, "seq_len": 64, "num_layers": 2,
                       "d_model": 64, "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 160,
                       "stack": "scan"},
    "llama-loop-tied": {"kind": "llama", "num_layers": 2, "tie_embeddings": True},
    "encoder": {"kind": "encoder", "num_layers": 1},
    "mlp": {"kind": "mlp", "hidden": [64, 32]},
    "cnn": {"kind": "cnn"},
    "cnn-separable": {"kind": "cnn", "depthwise_separable": True},
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameters_are_the_models(name):
    """The formulas list exactly the parameters the model creates (paths and shapes)."""
    setup = jaxmem.resolve(make_config(model=MODELS[name]))
    _, params, _ = nnx.split(setup.abstract_model, nnx.Param, ...)
    made = sorted((path_of(p), tuple(x.shape))
                  for p, x in jax.tree_util.tree_leaves_with_path(params))
    anatomy = setup.config.model.anatomy(setup.build_options, 2)
    assert sorted(anatomy.params) == made


@pytest.mark.parametrize("stack", ["loop", "scan"])
def test_remat_savings_equal_the_jaxprs(stack, monkeypatch):
    """What each policy saves less than no remat equals what the jaxpr saves less, byte for
    byte: the rule of ``jax.checkpoint`` over the block's value graph. (XLA:CPU's scanned
    backward by stage leaves the values outside the blocks out of the peak's term, dead
    there: switched off here to compare what is saved.)"""
    set_backend(monkeypatch, "cpu", scan_remat_stages=False)

    def saved(policy: str) -> tuple[int, int]:
        config = make_config(model={**GPT, "stack": stack}, remat=policy, data={"batch_size": 4})
        e = estimate(config)
        jaxpr = analytic.program_residuals(build_program(jaxmem.resolve(config)))
        return e.term("saved activations"), sum(r.bytes for r in jaxpr)

    # a scanned stack on CPU keeps what the policy says; the jaxpr is backend-independent
    base_est, base_jaxpr = saved("none")
    for policy in ("full", "dots", "dots_no_batch", "minimal", "save:mlp_pre_act+key"):
        est, jaxpr = saved(policy)
        if stack == "scan":
            assert base_est - est == base_jaxpr - jaxpr, policy
        else:  # XLA:CPU undoes remat of loop blocks: the estimate keeps what no remat
            # keeps (the backward's float32 GELU pieces too, shared with the forward either way)
            assert est == base_est, policy


@pytest.mark.parametrize("preset,mesh", [("dp", {"data": 8}), ("fsdp", {"fsdp": 8}),
                                         ("tp", {"data": 2, "tensor": 4}),
                                         ("fsdp+tp", {"fsdp": 2, "tensor": 4})])
def test_arguments_equal_the_sharded_state(preset, mesh):
    """Parameters, optimizer state and batch per device equal the program's own arguments
    under the same shardings (no compile needed for these)."""
    config = make_config(model={**GPT, "stack": "scan"}, target="cpu:8", sharding=preset, mesh=mesh,
                         data={"batch_size": 16})
    e = estimate(config)
    numbers = analytic.numbers(build_program(jaxmem.resolve(config)))
    assert e.term("parameters") == numbers["param_bytes_per_device"]
    # up to Adam's int32 step counter
    assert numbers["opt_state_bytes_per_device"] - e.term("optimizer state") == 4
    assert e.term("batch") == numbers["batch_bytes_per_device"]


def test_freezing_and_optimizers_change_the_state():
    frozen = estimate(make_config(model=GPT, freeze={"embeddings": True}))
    trained = estimate(make_config(model=GPT))
    assert frozen.term("optimizer state") < trained.term("optimizer state")
    assert estimate(make_config(model=GPT, optimizer="sgd")).term("optimizer state") == 0
    lion = estimate(make_config(model=GPT, optimizer="lion")).term("optimizer state")
    assert 2 * lion == trained.term("optimizer state")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_close_to_thecompiled_total(remat):
    """On the quickstart's scanned GPT the estimate is within 10% of XLA's total."""
    exp = jaxmem.Experiment.from_yaml("experiments/quickstart.yaml",
                                      ["sweep.precision=[fp32]", f"sweep.remat=[{remat}]"])
    config = exp.grid()[0].config
    total = compiled_total(config)
    e = estimate(config)
    assert e.total_bytes == sum(t.bytes for t in e.terms if t.counted)
    assert abs(e.total_bytes / total - 1) < 0.10


@pytest.mark.parametrize("micro", [1, 2])
def test_data_parallel_gradients_are_all_reduced_together(micro):
    """Replicated parameters over 8 data-parallel CPU devices: XLA all-reduces every gradient
    at once (twice the parameters alive, three times with microbatches), which the estimate
    holds; it is then within 10% of the compiled total."""
    config = make_config(model={"kind": "mlp", "in_features": 256, "hidden": [1024, 1024]},
                         optimizer="sgd", target="cpu:8", sharding="dp", mesh={"data": 8},
                         data={"batch_size": 16, "microbatches": micro})
    total = compiled_total(config)
    e = estimate(config)
    assert e.term("gradients") == (2 if micro == 1 else 3) * e.term("parameters")
    assert "all-reduced" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
    assert abs(e.total_bytes / total - 1) < 0.10

def test_fsdp_gathers_and_microbatches_accumulate():
    dp = estimate(make_config(model=GPT, target="cpu:8", mesh={"data": 8}, data={"batch_size": 8}))
    fsdp = estimate(make_config(model=GPT, target="cpu:8", mesh={"fsdp": 8}, sharding="fsdp",
                                data={"batch_size": 8}))
    assert fsdp.term("parameters") * 8 == dp.term("parameters")
    assert fsdp.term("gathered parameters") > 0 == dp.term("gathered parameters")
    one = estimate(make_config(model=GPT, data={"batch_size": 8}))
    four = estimate(make_config(model=GPT, data={"batch_size": 8, "microbatches": 4}))
    assert four.term("saved activations") < one.term("saved activations")
    assert four.term("gradients") >= four.term("parameters")  # the accumulator


def test_unsupported_for_forward_tasks():
    with pytest.raises(Unsupported):
        estimate(make_config(task="inference"))


FACTORIES = {"tiny_custom.py": """
import jax, jax.numpy as jnp
from flax import nnx
from jaxmem import Workload

class Net(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(64, 256, rngs=rngs)
        self.b = nnx.Linear(256, 8, rngs=rngs)
    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))

def workload(batch_size):
    B = batch_size
    return Workload(init=lambda rngs: Net(rngs),
                    batch={"x": jax.ShapeDtypeStruct((B, 64), jnp.float32),
                           "y": jax.ShapeDtypeStruct((B, 8), jnp.float32)},
                    loss=lambda m, b: jnp.mean((m(b["x"]) - b["y"]) ** 2))
"""}


def test_custom_models_are_estimated_from_their_jaxpr(workdir):
    """No shape formulas: parameters from the abstract model, kept values from the jaxpr."""
    config = make_config(model={"kind": "custom", "factory": "tiny_custom:workload"},
                         data={"batch_size": 32})
    e = estimate(config)
    program = build_program(jaxmem.resolve(config))
    numbers = analytic.numbers(program)
    assert e.term("parameters") == numbers["param_bytes_per_device"]
    kept = sum(r.bytes for r in analytic.program_residuals(program))
    assert e.term("saved activations") in (0, kept)  # the larger moment decides
    assert e.total_bytes > numbers["argument_bytes_per_device"]


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_custom_models_are_estimated_under_fsdp(workdir, precision):
    """A custom model has no blocks: the CNN rules keyed on them (a float32 FSDP CNN's first
    forward, a 16-bit CNN's pooling backward) do not apply, and nothing breaks."""
    config = make_config(model={"kind": "custom", "factory": "tiny_custom:workload"},
                         target="cpu:8", sharding="fsdp", mesh={"fsdp": 8},
                         precision=precision, data={"batch_size": 32})
    e = estimate(config)
    assert all(t.bytes >= 0 for t in e.terms)
    assert e.total_bytes > e.term("parameters")


def test_cli_json(workdir, cli_runner):
    result = cli_runner.invoke(cli, ["estimate", str(QUICKSTART), "--json", "--set",
                                     "sweep.precision=[fp32]"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert {"name", "total_bytes", "terms"} <= set(row)
        assert row["total_bytes"] == sum(row["terms"].values())


def test_cli_bad_input_exits_2(workdir, cli_runner):
    result = cli_runner.invoke(cli, ["estimate", str(QUICKSTART), "--set",
                                     "mesh.data=3"])
    assert result.exit_code == 2
    assert "batch_size" in result.output


def test_run_rows_carry_the_estimate(workdir, cli_runner):
    out = workdir / "runs"
    result = cli_runner.invoke(cli, ["run", str(QUICKSTART), "--out", str(out), "--set",
                                     "sweep.precision=[fp32]", "--set", "sweep.remat=[full]",
                                     "--workers", "0"])
    assert result.exit_code == 0, result.output
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    est = row["estimate"]
    assert est["error"] == pytest.approx(est["total_bytes"] / row["compiled"]["total_bytes"] - 1)
    assert "estimate/dev" in result.output


def test_a_fused_loss_gradient_is_written_over_the_logits():
    """On TPU the loss gradient is one fusion over the kept logits: a larger vocabulary adds
    the logits once, not a second ``B x L x V`` buffer as on CPU (nor the embedding's
    gradient: its update is fused into the matmul making it). Shapes are multiples of the
    TPU tiles, so no padding enters."""
    def loss_moment(target, vocab):
        e = estimate(make_config(model={**GPT, "vocab_size": vocab, "seq_len": 128},
                                 target=target, remat="full", data={"batch_size": 8}))
        assert "loss gradient" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.total_bytes - sum(e.term(t) for t in ARGUMENT_TERMS)

    grown = loss_moment("tpu:v5e:1x1", 16384) - loss_moment("tpu:v5e:1x1", 8192)
    logits = 8 * 128 * 8192 * 4
    assert grown == logits
    assert loss_moment("cpu:1", 16384) - loss_moment("cpu:1", 8192) > 2 * logits


def test_the_blocks_backward_does_not_hold_the_logits():
    """XLA:TPU frees the logits and the final norm's values before the blocks' backward: where
    that moment is the peak (long sequences, a small vocabulary), the vocabulary does not move
    the saved activations."""
    def saved(vocab):
        e = estimate(make_config(model={**GPT, "vocab_size": vocab, "seq_len": 512},
                                 target="tpu:v5e:1x1", remat="none", data={"batch_size": 4}))
        assert "backward of a" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.term("saved activations")

    assert saved(256) == saved(512)


def test_tpu_microbatches_accumulate_in_place_and_the_loss_upcasts():
    """On TPU each microbatch's gradients are added to the accumulator as they are made: where
    the backward starts only the accumulator is alive. Under bf16 compute the loss works on a
    float32 copy of the logits (one ``B x L x V`` float32 buffer beside the kept ones)."""
    model = {**GPT, "vocab_size": 16384, "seq_len": 128}
    e = estimate(make_config(model=model, target="tpu:v5e:1x1", precision="bf16-mixed",
                             data={"batch_size": 16, "microbatches": 4}))
    details = dict((t.name, t.detail) for t in e.terms)
    assert "loss gradient" in details["peak transients"]
    assert e.term("gradients") == e.term("parameters")  # fp32 accumulator, all trainable
    assert e.term("peak transients") == 4 * 128 * 16384 * 4  # float32 logits of a microbatch
    cpu = estimate(make_config(model=model, target="cpu:1", precision="bf16-mixed",
                               data={"batch_size": 16, "microbatches": 4}))
    # XLA:CPU: the accumulator, a microbatch's gradients and (bf16 compute) their float32 copy
    assert cpu.term("gradients") == 3 * cpu.term("parameters")


def test_tpu_keeps_a_scans_elementwise_matmul_operands_in_bfloat16(monkeypatch):
    """XLA:TPU computes the norms' outputs and the GELU inside the matmuls that read them, but
    a scanned float32 stack's residuals are fixed before XLA fuses: they are kept, narrowed to
    bfloat16 (half the float32 bytes XLA:CPU keeps; ``keeps_scanned_float32_operands``, measured
    with explain); the final norm's output, outside the scan, is fused. Without that rule
    (a Python loop's fusion) none of them is kept."""
    B, L, D, F, layers = 8, 128, 256, 1024, 2
    model = {**GPT, "vocab_size": 32768, "seq_len": L, "d_model": D, "num_layers": layers,
             "stack": "scan"}

    def saved(target):
        e = estimate(make_config(model=model, target=target, remat="none", data={"batch_size": B}))
        assert "loss gradient" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.term("saved activations")

    fused = (2 * B * L * D + B * L * F) * 4  # per layer two B x L x D and one B x L x F value
    # and the matmul-only values kept (scaled query, keys, values, context) are bfloat16
    narrowed = 4 * B * L * D * (4 - 2)
    final_norm = B * L * D * 4  # the final norm's output, read only by the LM head's matmul
    cpu = saved("cpu:1")
    assert cpu - saved("tpu:v5e:1x1") == layers * (fused // 2 + narrowed) + final_norm
    set_backend(monkeypatch, "tpu", keeps_scanned_float32_operands=False)
    assert cpu - saved("tpu:v5e:1x1") == layers * (fused + narrowed) + final_norm


@pytest.mark.parametrize("stack,micro", [("loop", 1), ("scan", 1), ("loop", 2)])
def test_tpu_fuses_updates_into_the_gradient_matmuls(stack, micro):
    """On TPU a Python-loop model's updates are computed in the matmuls making their
    gradients: none is alive at the peak; a scanned stack still accumulates its stacked
    gradients, and microbatches their accumulator."""
    e = estimate(make_config(model={**GPT, "stack": stack}, target="tpu:v5e:1x1",
                             data={"batch_size": 4, "microbatches": micro}))
    assert (e.term("gradients") == 0) == (stack == "loop" and micro == 1)


def test_tpu_keeps_float32_matmul_operands_in_bfloat16():
    """At float32 XLA:TPU multiplies bfloat16 operands (the default precision), so a kept
    value used only by matmuls (keys, values) is kept in bfloat16; the query, scaled before
    its matmul, stays float32."""
    B, L, D, layers = 8, 128, 256, 2
    model = {**GPT, "vocab_size": 32768, "seq_len": L, "d_model": D, "num_layers": layers,
             "stack": "scan"}

    def saved(target):
        e = estimate(make_config(model=model, target=target, remat="save:query+key+value",
                                 data={"batch_size": B}))
        assert "loss gradient" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.term("saved activations")

    final_norm = B * L * D * 4  # the final norm's output, computed in the LM head's matmul
    assert saved("cpu:1") - saved("tpu:v5e:1x1") == layers * 2 * B * L * D * (4 - 2) + final_norm


def test_tpu_recomputes_elementwise_matmul_operands_inside_the_matmuls(monkeypatch):
    """Where a block's backward is the peak (full remat, long sequences, a small vocabulary),
    XLA:TPU's recomputation materialises neither the first norm's output nor the scaled query
    (the attention stage's elementwise matmul operands): two ``B x L x D`` values fewer than
    the same backend without that fusion."""
    B, L, D = 4, 512, 256
    model = {**GPT, "vocab_size": 256, "seq_len": L, "d_model": D, "stack": "scan"}

    def transients():
        e = estimate(make_config(model=model, target="tpu:v5e:1x1", remat="full",
                                 data={"batch_size": B}))
        assert "backward of a" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.term("peak transients")

    fused = transients()
    set_backend(monkeypatch, "tpu", fuses_matmul_operands=False)
    assert transients() - fused == 2 * B * L * D * 4


def test_tpu_loss_upcast_is_the_logits_copy_only():
    """A chunked loss keeps no logits to write over: its float32 chunk values are the same
    bytes under bf16 and fp32 compute (the float32 copy is of whole kept logits only)."""
    def transients(precision):
        e = estimate(make_config(model={**GPT, "vocab_size": 32768, "seq_len": 512,
                                        "loss_chunks": 4}, target="tpu:v5e:1x1", remat="full",
                                 precision=precision, data={"batch_size": 8}))
        assert "loss gradient" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.term("peak transients")

    assert transients("bf16-mixed") == transients("fp32") > 0


def test_tpu_updates_wait_for_every_gradient_under_loss_scaling():
    """Loss scaling checks every gradient is finite before any update: no update fuses into
    its gradient's matmul, so the largest gradient is alive again."""
    def grads(precision):
        return estimate(make_config(model=GPT, target="tpu:v5e:1x1", precision=precision,
                                    data={"batch_size": 4})).term("gradients")

    assert grads("bf16-mixed") == 0 < grads("fp16-mixed")


def test_dots_saves_convolutions_and_dots_no_batch_does_not():
    """JAX's ``dots_saveable`` saves convolution outputs; ``dots_with_no_batch_dims_saveable``
    only saves dot_generals without batch dimensions."""
    def saved(remat):
        return estimate(make_config(model=CNN, target="tpu:v5e:1x1", remat=remat,
                                    data={"batch_size": 8})).term("saved activations")

    assert saved("dots") > saved("dots_no_batch") == saved("full")


def test_the_first_conv_block_makes_no_input_gradient():
    """The images get no gradient: the first block's backward holds no gradient of its
    input, the later blocks' do."""
    config = make_config(model=CNN)
    blocks = config.model.anatomy(jaxmem.setup.resolve(config).build_options, 8).blocks
    names = [[t.name for t in b.grad_workspace] for b in blocks]
    assert "d_input" not in names[0] and "d_input" in names[1]


def test_tpu_pads_conv_channels_to_the_lanes():
    """XLA:TPU lays a convolution's values out with the channels minor: 64 channels take the
    bytes of 128. Doubling the first block's 64 channels to 128 leaves its saved output's
    bytes unchanged on TPU, and doubles them on CPU."""
    def saved(target, channels):
        model = {**CNN, "image_size": 128, "channels": [channels]}  # 128 x 128 fills the lanes
        return estimate(make_config(model=model, target=target, remat="none",
                                    data={"batch_size": 8})).term("saved activations")

    assert saved("tpu:v5e:1x1", 64) == saved("tpu:v5e:1x1", 128)
    assert saved("cpu:1", 128) > 1.9 * saved("cpu:1", 64)


def test_tpu_block_backward_holds_the_blocks_up_to_it(monkeypatch):
    """XLA:TPU frees a block's saved values once its backward is done: where the first (widest)
    conv block's backward is the peak, the later blocks' saved values are not part of it."""
    config = make_config(model={**CNN, "channels": [128, 128, 128]}, remat="full",
                         target="tpu:v5e:1x1", data={"batch_size": 16})
    tpu = estimate(config)
    assert "backward of a conv block 3->128 at 64x64" in dict(
        (t.name, t.detail) for t in tpu.terms)["peak transients"]
    # full remat: the first block keeps the images (the batch itself) and nothing else; the
    # later blocks' inputs are freed by then
    assert tpu.term("saved activations") == 0
    set_backend(monkeypatch, "tpu", frees_saved_in_backward=False)
    B, C = 16, 128  # the later blocks' inputs: 32 x 32 and 16 x 16, 128 channels
    assert estimate(config).term("saved activations") == B * (32 * 32 + 16 * 16) * C * 4


def test_tpu_conv_backward_is_fused():
    """On TPU a conv block's pooling and ReLU backward are one fusion. Recomputing (full
    remat) it materialises the ReLU's mask (1 byte per value), the convolution's gradient
    (bfloat16 at float32: read only by convolutions) and the gradient flowing in (at half
    the side); with the ReLU's input kept (no remat) the gradient is written over it."""
    B, S, C = 16, 64, 128
    model = {**CNN, "channels": [C]}

    def transients(remat):
        e = estimate(make_config(model=model, target="tpu:v5e:1x1", remat=remat,
                                 data={"batch_size": B}))
        return e.term("peak transients")

    d_out = B * (S // 2) ** 2 * C * 4
    assert transients("full") == B * S * S * C * (1 + 2) + d_out
    assert transients("none") == d_out


def test_a_blocks_mlp_and_attention_gradients_are_not_alive_at_once(monkeypatch):
    """A transformer block's backward goes through its MLP, then its attention: the MLP's
    activation gradients are dead before the scores' gradient is made. Where the scores
    dominate, the block's backward holds the residual stream's and the scores' gradients
    (and, XLA:CPU's scanned float32 loop, its layer's weights copied out of the stack, and
    its kept matmul operands: ``copies_scanned_operands_without_remat``, switched off here
    to see the rest alone; with it the total is within 10 % of XLA's)."""
    B, L, D, H = 2, 512, 64, 4
    model = {**GPT, "vocab_size": 256, "seq_len": L, "d_model": D, "num_heads": H,
             "stack": "scan"}
    config = make_config(model=model, target="cpu:1", remat="none", data={"batch_size": B})
    assert abs(estimate(config).total_bytes / compiled_total(config) - 1) < 0.10
    set_backend(monkeypatch, "cpu", copies_scanned_operands_without_remat=False)
    e = estimate(config)
    assert "backward of a" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
    anatomy = config.model.anatomy(jaxmem.resolve(config).build_options, B)
    layer = sum(4 * math.prod(s[1:]) for p, s in anatomy.params if "/blocks" in p)
    assert e.term("peak transients") == (B * L * D + B * H * L * L) * 4 + layer


def test_tpu_recomputes_a_block_stage_by_stage():
    """XLA:TPU recomputes each stage of a block just before that stage's backward: where the
    attention's backward is the peak (full remat, long sequences), the MLP's width does not
    change it. XLA:CPU recomputes a scanned block whole, its MLP values with the rest."""
    def transients(target, ratio):
        model = {**GPT, "vocab_size": 256, "seq_len": 1024, "d_model": 64, "mlp_ratio": ratio,
                 "stack": "scan"}
        e = estimate(make_config(model=model, target=target, remat="full", data={"batch_size": 2}))
        assert "backward of a" in dict((t.name, t.detail) for t in e.terms)["peak transients"]
        return e.term("peak transients")

    assert transients("tpu:v5e:1x1", 2) == transients("tpu:v5e:1x1", 8)
    assert transients("cpu:1", 2) < transients("cpu:1", 8)


def test_the_accuracy_benchmark_rescores_its_rows(tmp_path, capsys):
    """``benchmarks/estimate_accuracy.py --rescore`` estimates a previous run's rows again and
    compares them with the compiled figures it kept: with the same code, the same errors."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "estimate_accuracy.py"
    spec = importlib.util.spec_from_file_location("estimate_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = tmp_path / "rows.jsonl"
    assert bench.main(["--seed", "3", "--n", "2", "--tpu", "0", "--worst", "0",
                       "--out", str(rows)]) == 0
    again = tmp_path / "again.jsonl"
    assert bench.main(["--rescore", str(rows), "--worst", "0", "--out", str(again)]) == 0
    first, second = ([json.loads(line) for line in p.read_text().splitlines()]
                     for p in (rows, again))
    assert [r["error"] for r in first] == [r["error"] for r in second]
    assert [r["compiled_bytes"] for r in first] == [r["compiled_bytes"] for r in second]
    assert "2 rows estimated again" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["fsdp", "dp"])
def test_tpu_slices_a_zero_sharded_convolution_of_the_images(preset, monkeypatch):
    """Under fsdp XLA:TPU computes the first convolution, its kernel's 64 output channels split
    over 4 chips, as 4 slices of 16 channels, each padded to 128 lanes; the first block's
    backward holds four of them besides the whole output. Under dp the kernel is whole: no
    slices."""
    B, S, C, n = 16, 64, 64, 4

    def transients():
        mesh = {"fsdp": n} if preset == "fsdp" else {"data": n}
        return estimate(make_config(model={**CNN, "image_size": S, "channels": [C]}, remat="full",
                                    target="tpu:v5e:2x2", sharding=preset, mesh=mesh,
                                    data={"batch_size": B})).term("peak transients")

    sliced = transients()
    set_backend(monkeypatch, "tpu", slices_sharded_convs=False)
    one = B // n * S * S * 128 * 4  # 16 channels on 128 lanes, float32
    assert sliced - transients() == (4 * one if preset == "fsdp" else 0)


def test_a_depthwise_first_convolution_is_not_sliced():
    """A depthwise-separable CNN's first convolution has 3 output channels, which 4 chips do
    not divide (its kernel stays whole), and its pointwise one reads the depthwise output, not
    the images: nothing is sliced."""
    model = {**CNN, "image_size": 64, "channels": [64], "depthwise_separable": True}
    tpu = {"target": "tpu:v5e:2x2", "data": {"batch_size": 16}, "remat": "full"}
    fsdp = estimate(make_config(model=model, sharding="fsdp", mesh={"fsdp": 4}, **tpu))
    dp = estimate(make_config(model=model, sharding="dp", mesh={"data": 4}, **tpu))
    assert fsdp.term("peak transients") == dp.term("peak transients")


def test_tpu_adds_microbatch_gradients_in_the_matmuls_making_them():
    """Where XLA:TPU fuses updates into the gradient matmuls, it fuses the addition to the
    microbatch accumulator there too: an MLP's block backward holds the accumulator and no
    gradient besides it. Under loss scaling (the finite check waits for every gradient) the
    largest gradient is made beside it."""
    def grads(precision):
        model = {"kind": "mlp", "in_features": 256, "hidden": [2048, 2048]}
        e = estimate(make_config(model=model, target="tpu:v5e:1x1", remat="full",
                                 precision=precision, data={"batch_size": 512, "microbatches": 2}))
        return e.term("gradients"), e.term("parameters")

    fused, params = grads("bf16-mixed")
    assert fused == params  # the float32 accumulator of every trainable parameter
    waited, _ = grads("fp16-mixed")
    assert waited == params + 2048 * 2048 * 4  # and the largest gradient, a hidden kernel


def test_a_tensor_sharded_table_is_gathered_by_its_shards_size():
    """Whether the SPMD partitioner all-gathers a ZeRO-sharded weight depends on its size per
    device: under tensor parallelism over 4 a 4096-row embedding table is 1024 rows, within
    16 x the 128 rows it multiplies, so it is gathered over fsdp (its other half added), as
    is a 2048-row one."""
    def gathered(vocab):
        model = {**GPT, "vocab_size": vocab, "d_model": 192, "num_heads": 4, "seq_len": 128,
                 "stack": "scan"}
        return estimate(make_config(model=model, target="cpu:8", sharding="fsdp+tp",
                                    mesh={"fsdp": 2, "tensor": 4}, data={"batch_size": 2})
                        ).term("gathered parameters")

    # the table's fsdp half: (vocab / 4) x 96 float32 values
    assert gathered(4096) - gathered(2048) == (1024 - 512) * 96 * 4


@pytest.mark.parametrize("hidden, whole", [
    ([512], 784 * 512 + 512 * 10),  # the input split: the head's input stays split too
    ([512, 2048, 1024], 784 * 512),  # 512 -> 2048 split on its output: features from then
    ([1024], 0),  # split on its output dimension from the first kernel on
])
def test_batch_split_inputs_give_whole_gradients(hidden, whole):
    """An MLP's first input is split by the batch. Under fsdp each kernel's ZeRO split falls
    on its largest dimension: one split on its input dimension keeps the batch split (its
    gradient is made whole from each device's rows); one split on its output dimension
    leaves the rest of the chain split by features."""
    setup = jaxmem.resolve(make_config(model={"kind": "mlp", "in_features": 784, "hidden": hidden},
                                       target="cpu:8", sharding="fsdp", mesh={"fsdp": 8}))
    anatomy = setup.config.model.anatomy(setup.build_options, 4)
    size = Sizer(setup.mesh, setup.rules, np.dtype("float32"),
                                  np.dtype("float32"), estimate_module.BACKENDS["cpu"])
    # (rows: a device's examples; an MLP has no lookup table whose gradient it decides)
    assert param_memory.batch_split_gradients(anatomy, setup, size, rows=1) == whole * 4


@pytest.mark.parametrize("remat,batch", [("dots", 4), ("none", 2)])
def test_a_scanned_stack_of_one_layer_is_estimated_as_a_loop(remat, batch):
    """XLA removes a while loop of one trip: a scanned stack of one layer compiles as the
    Python loop does (the same total but for a few kilobytes), and the estimate follows it.
    Under remat none the float32 block's backward shares its forward's values as a loop
    block's does: within 10 % of the compile (estimated as a scan: -15 %)."""
    model = {"kind": "encoder", "num_layers": 1, "d_model": 128, "num_heads": 4,
             "seq_len": 128, "vocab_size": 256}

    def config(stack):
        return make_config(model={**model, "stack": stack}, remat=remat, precision="fp32",
                           optimizer="sgd", data={"batch_size": batch})

    scan, loop = compiled_total(config("scan")), compiled_total(config("loop"))
    assert abs(scan - loop) < 1e-3 * loop
    assert estimate(config("scan")).total_bytes == estimate(config("loop")).total_bytes
    if remat == "none":
        assert abs(estimate(config("scan")).total_bytes / scan - 1) < 0.10
    two = {**model, "num_layers": 2}
    assert (estimate(make_config(model={**two, "stack": "scan"}, remat="dots")).total_bytes
            != estimate(make_config(model={**two, "stack": "loop"}, remat="dots")).total_bytes)


def test_the_accuracy_breakdown_partitions_the_rows():
    """Each factor of the benchmark's breakdown splits the rows into groups that add up, and
    counts a row as within +-10 % exactly when its error is."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "estimate_accuracy.py"
    spec = importlib.util.spec_from_file_location("estimate_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"config": {"model": {"kind": k, "stack": "loop"}, "remat": r}, "error": e}
            for k, r, e in [("gpt", "full", 0.05), ("gpt", "none", -0.2), ("mlp", "none", 0.1),
                            ("cnn", "dots", 0.11)]]
    table = bench.breakdown(rows)
    assert set(table) == set(bench.FACTORS)
    for groups in table.values():
        assert sum(n for n, _, _ in groups.values()) == len(rows)
        assert sum(ok for _, ok, _ in groups.values()) == 2
    assert table["model"]["gpt"] == (2, 1, pytest.approx(-0.075))
    assert table["remat"]["none"][:2] == (2, 1)
    assert table["sharding"] == {"none": (4, 2, pytest.approx(0.075))}


@pytest.mark.slow
@pytest.mark.tpu_target
def test_tpu_makes_a_scanned_stacks_gradients_after_the_loss_gradient(monkeypatch):
    """XLA:TPU makes a scanned stack's gradient buffers when the backward loop starts: at the
    LM head's float32 logits (this GPT's peak) no gradient is alive. Within 1 % of libtpu's
    peak; with the stack's gradients beside the logits (XLA:CPU's order), over by 10 %."""
    from jaxmem.measure import fits_figure

    config = make_config(model={"kind": "gpt", "num_layers": 4, "d_model": 1024, "num_heads": 8,
                                "seq_len": 512, "vocab_size": 32000, "stack": "scan"},
                         target="tpu:v5e:2x2", mesh={"data": 4}, remat="full",
                         precision="bf16-mixed", optimizer="adamw", data={"batch_size": 16})
    program = build_program(jaxmem.resolve(config))
    peak = fits_figure(compiled_memory(program.step, *program.abstract_args))[1]
    e = estimate(config)
    assert abs(e.total_bytes / peak - 1) < 0.01
    assert "loss gradient" in e.to_dict()["details"]["peak transients"]
    set_backend(monkeypatch, "tpu", stack_gradients_in_loop=False)
    assert estimate(config).total_bytes / peak - 1 > 0.10


def _libtpu_peak(config) -> int:
    """libtpu's peak for ``config``'s step compiled on its virtual TPU target."""
    from jaxmem.measure import fits_figure

    program = build_program(jaxmem.resolve(config))
    return fits_figure(compiled_memory(program.step, *program.abstract_args))[1]


@pytest.mark.tpu_target
def test_tpu_reduces_a_float32_chains_gradients_before_their_updates(monkeypatch):
    """A float32 MLP over data-parallel TPU chips all-reduces each kernel's gradient before its
    update (no update fused into the gradient's matmul): the largest gradient is made. Within
    6 % of libtpu's peak with the rule (+3.3 % measured), more than 10 % short without (-15 %)."""
    config = make_config(model={"kind": "mlp", "in_features": 1024, "hidden": [4096, 8192],
                                "out_features": 1000},
                         target="tpu:v5e:2x2", sharding="dp", mesh={"data": 4}, remat="none",
                         precision="fp32", optimizer="adamw", data={"batch_size": 2048})
    peak = _libtpu_peak(config)
    assert abs(estimate(config).total_bytes / peak - 1) < 0.06
    set_backend(monkeypatch, "tpu", reduces_gradients_before_update=False)
    assert estimate(config).total_bytes / peak - 1 < -0.10


@pytest.mark.tpu_target
def test_tpu_recomputes_a_16_bit_conv_output_whole_and_writes_its_gradient_over_it(monkeypatch):
    """bf16-mixed remat full on TPU: a conv block's recomputed ReLU input is made whole in
    16 bits and its gradient written into the same buffer (no mask beside it). Within 5 % of
    libtpu's peak with the rule (0.0 % measured), more than 20 % over without (+37 %)."""
    config = make_config(model={"kind": "cnn", "image_size": 224, "channels": [128, 128]},
                         target="tpu:v5e:2x2", remat="full", precision="bf16-mixed",
                         optimizer="adamw", data={"batch_size": 32})
    peak = _libtpu_peak(config)
    assert abs(estimate(config).total_bytes / peak - 1) < 0.05
    set_backend(monkeypatch, "tpu", recomputes_16bit_whole=False)
    assert estimate(config).total_bytes / peak - 1 > 0.20




def test_tpu_recomputes_a_softmax_inside_the_fusions_reading_it(monkeypatch):
    """Under dots the scores are saved; XLA:TPU recomputes the attention probabilities from
    them inside the backward's fusions that read them, with no buffer of their own in
    float32 layers. The estimate is then within 10% of libtpu's peak; counting the
    probabilities as a recomputed buffer puts it over 25% above."""
    from jaxmem.measure import fits_figure  # noqa: PLC0415

    config = make_config(model={**GPT, "num_layers": 2, "d_model": 512, "num_heads": 8,
                                "seq_len": 1024, "vocab_size": 1024, "mlp_ratio": 4,
                                "stack": "loop"},
                         remat="dots", precision="fp32", optimizer="sgd",
                         target="tpu:v5e:2x2", data={"batch_size": 8})
    program = build_program(jaxmem.resolve(config))
    peak = fits_figure(compiled_memory(program.step, *program.abstract_args))[1]
    assert abs(estimate(config).total_bytes / peak - 1) < 0.10
    set_backend(monkeypatch, "tpu", fuses_softmax_recompute=False)
    assert estimate(config).total_bytes / peak - 1 > 0.25


def test_a_zero_split_lookup_table_longer_than_the_tokens_is_not_gathered():
    """XLA's partitioner moves the activations, not the weight, when a ZeRO-split weight is
    16 or more times the rows it multiplies on a device (``GATHER_RATIO``); a lookup-only
    table with more rows than the tokens of the devices sharing it is not gathered either
    (its lookup reads the local rows: ``Backend.scatters_zero_lookup_gradients``). An fsdp
    encoder's 8192-token table against 8 x 64 and 9 x 64 rows a device (4096 and 4608 tokens
    over the 8 devices): not gathered at either; the estimate within 2 % of XLA's total at 9
    (-0.8 % measured, +18 % when the table was counted gathered)."""
    model = {"kind": "encoder", "num_layers": 2, "d_model": 64, "num_heads": 2,
             "seq_len": 64, "vocab_size": 8192, "mlp_ratio": 4, "stack": "loop"}

    def config(batch):
        return make_config(model=model, target="cpu:8", sharding="fsdp", mesh={"fsdp": 8},
                           precision="fp32", data={"batch_size": batch})

    gathered = [estimate(config(b)).term("gathered parameters") for b in (64, 72)]
    assert gathered[0] == gathered[1]
    assert abs(estimate(config(72)).total_bytes / compiled_total(config(72)) - 1) < 0.02


@pytest.mark.tpu_target
def test_tpu_gathers_a_loop_stacks_weights_again_for_the_backward(monkeypatch):
    """Under FSDP x tensor with no microbatch loop, XLA:TPU all-gathers a Python-loop
    encoder's weights again in each block's backward: none of the forward's gathered copies is
    live at the peak. Within 8 % of libtpu's peak with the rule (-5.9 % measured), over by more
    than 10 % when the forward's gathered weights are counted kept (+13.6 %)."""
    config = make_config(model={"kind": "encoder", "num_layers": 3, "d_model": 512,
                                "num_heads": 8, "seq_len": 512, "vocab_size": 32000,
                                "mlp_ratio": 4, "stack": "loop"},
                         target="tpu:v5e:2x2", sharding="fsdp+tp", mesh={"fsdp": 2, "tensor": 2},
                         remat="dots", precision="fp32", optimizer="lion",
                         data={"batch_size": 4})
    peak = _libtpu_peak(config)
    assert abs(estimate(config).total_bytes / peak - 1) < 0.08
    set_backend(monkeypatch, "tpu", regathers_loop_weights=False)
    assert estimate(config).total_bytes / peak - 1 > 0.10


@pytest.mark.tpu_target
def test_tpu_keeps_a_scanned_float32_stacks_matmul_operands(monkeypatch):
    """A scanned float32 GPT under remat none: its residuals are fixed before XLA fuses, so
    the normalised stream and the MLP activation are kept (in bfloat16) beside the float32
    values, not recomputed inside their matmuls as a Python loop's are. Within 5 % of libtpu's
    peak with the rule (+1.0 % measured), more than 8 % short without (-10.4 %)."""
    config = make_config(model={"kind": "gpt", "num_layers": 4, "d_model": 512, "num_heads": 8,
                                "seq_len": 512, "vocab_size": 8192, "mlp_ratio": 4,
                                "stack": "scan"},
                         target="tpu:v5e:2x2", remat="none", precision="fp32", optimizer="sgd",
                         data={"batch_size": 16})
    peak = _libtpu_peak(config)
    assert abs(estimate(config).total_bytes / peak - 1) < 0.05
    set_backend(monkeypatch, "tpu", keeps_scanned_float32_operands=False)
    assert estimate(config).total_bytes / peak - 1 < -0.08


@pytest.mark.tpu_target
def test_tpu_makes_a_scanned_float32_gpts_loss_gradient_in_bfloat16(monkeypatch):
    """A scanned float32 GPT under FSDP (its vocabulary whole on each chip): the fused loss
    gradient is made in bfloat16 beside the float32 logits, not over them. Within 6 % of
    libtpu's peak with the rule (-0.5 % measured), more than 20 % short without (-23.9 %)."""
    config = make_config(model={"kind": "gpt", "num_layers": 4, "d_model": 1024,
                                "num_heads": 8, "seq_len": 512, "vocab_size": 50304,
                                "mlp_ratio": 4, "stack": "scan"},
                         target="tpu:v5e:2x2", sharding="fsdp", mesh={"fsdp": 4}, remat="full",
                         precision="fp32", optimizer="sgd", data={"batch_size": 16})
    peak = _libtpu_peak(config)
    assert abs(estimate(config).total_bytes / peak - 1) < 0.06
    set_backend(monkeypatch, "tpu", narrows_scanned_loss_gradient=False)
    assert estimate(config).total_bytes / peak - 1 < -0.20


@pytest.mark.tpu_target
def test_tpu_holds_a_scanned_float32_stacks_weights_in_bfloat16(monkeypatch):
    """A scanned float32 encoder on one chip: XLA:TPU converts the stack's weights to
    bfloat16 whole before its loops and holds them through the step. Within 4 % of libtpu's
    peak with the rule (+1.4 % measured), more than 6 % short without (-7.9 %)."""
    config = make_config(model={"kind": "encoder", "num_layers": 4, "d_model": 1536,
                                "num_heads": 12, "seq_len": 256, "vocab_size": 8192,
                                "mlp_ratio": 4, "stack": "scan"},
                         target="tpu:v5e:2x2", remat="save:query+key+value", precision="fp32",
                         optimizer="adamw", data={"batch_size": 8})
    peak = _libtpu_peak(config)
    assert abs(estimate(config).total_bytes / peak - 1) < 0.04
    set_backend(monkeypatch, "tpu", narrows_scanned_float32_weights=False)
    assert estimate(config).total_bytes / peak - 1 < -0.06
