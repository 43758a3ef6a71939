"""Whether a step fits a device, against what the device really lets XLA use: a fitting row, an
out-of-memory row, and the figure each backend is judged by."""

from __future__ import annotations

import pytest

import jaxmem
from jaxmem.measure import FITS_BASIS

pytestmark = pytest.mark.tpu_target
GPT = {"kind": "gpt", "vocab_size": 256, "seq_len": 128, "num_layers": 2, "d_model": 64,
       "num_heads": 4, "stack": "scan"}


@pytest.fixture(autouse=True)
def _libtpu():
    pytest.importorskip("libtpu", reason="needs the tpu-targets extra")


def run(**sections) -> jaxmem.Record:
    (record,) = jaxmem.run(jaxmem.Experiment.from_dict({"target": "tpu:v5e:2x2", **sections}))
    return record


def test_a_small_step_fits_with_headroom_against_libtpus_figure():
    r = run(model=GPT, data={"batch_size": 8})
    assert r.ok, r.error
    usable = r.env["device_memory_bytes"]
    assert "libtpu" in r.env["device_memory_source"] and usable < 16 * 2**30
    c = r.compiled
    assert c["fits_basis"] == FITS_BASIS["tpu"].field == "peak_bytes"
    assert c["fits"] is True
    assert c["headroom_bytes"] == usable - c["peak_bytes"]
    assert c["peak_bytes"] > 0  # not bounded by total: libtpu counts its own overheads


def test_a_step_libtpu_refuses_is_an_oom_row():
    # 2.4 G parameters with Adam on one chip: 29 GB of arguments
    mlp = {"kind": "mlp", "in_features": 1024, "hidden": [49152, 49152]}
    r = run(model=mlp, data={"batch_size": 64})
    assert r.status == "oom", r.error
    c = r.compiled
    assert c["fits"] is False
    assert "RESOURCE_EXHAUSTED" in r.error or "CompileTimeHbmOom" in r.error
    # what libtpu said, to its 0.01 GiB: more than the chip, and what the chip has
    assert c["oom_available_bytes"] == pytest.approx(15.75 * 2**30, abs=0.01 * 2**30)
    assert c["oom_required_bytes"] > c["oom_available_bytes"]
    # the doctor: what it needs, what the chip has, and a change that fits, by compile
    d = r.doctor
    assert d["needs_bytes"] == c["oom_required_bytes"]
    assert d["has_bytes"] == pytest.approx(c["oom_available_bytes"], abs=0.01 * 2**30)
    assert d["sets"] and d["verified"] and d["compiled_bytes"] <= d["has_bytes"]
    fixed = jaxmem.run(jaxmem.Experiment.from_dict(
        {"target": "tpu:v5e:2x2", "model": mlp, "data": {"batch_size": 64}}, d["sets"]))[0]
    assert fixed.ok and fixed.compiled["fits"] is True and not fixed.doctor


def test_the_table_says_what_fits_compares(tmp_path, cli_runner):
    from jaxmem.cli import cli

    path = tmp_path / "e.yaml"
    path.write_text("target: tpu:v5e:2x2\nmodel: {kind: mlp, hidden: [64]}\n")
    result = cli_runner.invoke(cli, ["run", str(path), "--out", str(tmp_path / "o"),
                                     "--no-progress"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "peak/dev" in text and "yes (" in text
    assert "fits: compiled.peak_bytes: libtpu's own peak" in text
