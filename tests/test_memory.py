"""Memory properties of the quickstart GPT that the techniques must show."""

from __future__ import annotations

import pytest

import jaxmem

NONE, DOTS, MINIMAL, FULL = "remat=none", "remat=dots", "remat=minimal", "remat=full"
FP32, BF16 = "precision=fp32", "precision=bf16-mixed"


def temp(records, remat, precision):
    return records[f"{remat},{precision}"].compiled["temp_bytes"]


def saved(records, remat, precision):
    return records[f"{remat},{precision}"].analytic["residual_bytes"]


def test_quickstart_compiles_every_configuration(quickstart_records):
    assert len(quickstart_records) == 8
    assert all(r.ok for r in quickstart_records.values())


@pytest.mark.parametrize("precision", [FP32, BF16])
def test_remat_lowers_compiled_temp(quickstart_records, precision):
    r = quickstart_records
    assert temp(r, NONE, precision) > temp(r, DOTS, precision) > temp(r, MINIMAL, precision)
    assert temp(r, MINIMAL, precision) >= temp(r, FULL, precision)


@pytest.mark.parametrize("precision", [FP32, BF16])
def test_remat_lowers_saved_residuals(quickstart_records, precision):
    r = quickstart_records
    assert saved(r, NONE, precision) > saved(r, DOTS, precision) > saved(r, MINIMAL, precision)
    assert saved(r, MINIMAL, precision) >= saved(r, FULL, precision)


def test_bf16_mixed_activations_are_about_half(quickstart_records):
    # the jaxpr's residuals, before any backend: activations are kept in bf16
    r = quickstart_records
    assert saved(r, NONE, BF16) / saved(r, NONE, FP32) == pytest.approx(0.5, abs=0.075)
    assert saved(r, DOTS, BF16) < 0.6 * saved(r, DOTS, FP32)


def test_bf16_mixed_keeps_f32_master_weights(quickstart_records):
    fp32 = quickstart_records[f"{NONE},{FP32}"].analytic
    bf16 = quickstart_records[f"{NONE},{BF16}"].analytic
    assert bf16["param_bytes"] == fp32["param_bytes"]
    assert bf16["opt_state_bytes"] == fp32["opt_state_bytes"]


def test_cpu_rows_say_bf16_savings_do_not_show(quickstart_records):
    assert any("XLA:CPU computes bf16" in n for n in quickstart_records[f"{NONE},{BF16}"].notes)
    assert not quickstart_records[f"{NONE},{FP32}"].notes


def test_scanned_rows_say_their_flops_undercount(quickstart_records):
    assert all(r.compiled["cost_has_loops"] for r in quickstart_records.values())


def test_flops_grow_with_depth_and_remat_recomputes():
    # a Python-loop stack, whose FLOPs XLA counts in full
    def flops(layers, policy):
        exp = jaxmem.Experiment.from_dict({
            "model": {"kind": "gpt", "vocab_size": 128, "seq_len": 64, "num_layers": layers,
                      "d_model": 64, "num_heads": 2, "stack": "loop"},
            "remat": policy})
        (record,) = jaxmem.run(exp)
        assert record.compiled["cost_has_loops"] is False
        return record.compiled["flops"]

    one, two, two_full = flops(1, "none"), flops(2, "none"), flops(2, "full")
    assert two > 1.3 * one
    assert two_full > two  # the price of remat: the forward runs again in the backward


@pytest.mark.tpu_target
def test_bf16_mixed_lowers_temp_on_a_tpu_target(quickstart):
    """XLA:CPU upcasts bf16 to f32, so the saving shows on a backend that computes in bf16."""
    pytest.importorskip("libtpu", reason="needs the tpu-targets extra")
    exp = jaxmem.Experiment.from_dict(quickstart.to_dict(),
                                      ["target=tpu:v5e:2x2", "remat=none"])
    records = {r.name: r for r in jaxmem.run(exp)}
    fp32, bf16 = records[FP32], records[BF16]
    assert fp32.ok and bf16.ok, (fp32.error, bf16.error)
    assert fp32.env["device_kind"].startswith("TPU v5")
    assert bf16.compiled["temp_bytes"] < 0.8 * fp32.compiled["temp_bytes"]
    assert not bf16.notes
