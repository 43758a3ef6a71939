"""The comparison table: what each column covers, deltas, failed rows, the caption."""

from __future__ import annotations

from rich.console import Console

from jaxmem.analytic import Residual
from jaxmem.record import Record
from jaxmem.report import fmt_headroom, residual_rows, table


def text(records) -> str:
    console = Console(width=400, record=True)
    console.print(table(records, title="t"))
    return " ".join(console.export_text().split())  # captions wrap at the table's width


def row(index, name, *, temp, total, **extra) -> Record:
    compiled = {"temp_bytes": temp, "total_bytes": total, "argument_bytes": 1024,
                "flops": 1e9, "compile_seconds": 0.5, "platform": extra.pop("platform", "cpu"),
                **extra.pop("compiled", {})}
    analytic = {"param_count": 1000, "param_bytes": 4000, "param_bytes_per_device": 4000,
                "opt_state_bytes": 8000, "opt_state_bytes_per_device": 8000,
                "residual_bytes": 2**20, **extra.pop("analytic", {})}
    return Record("e", index, name, "compile", extra.pop("status", "ok"), compiled=compiled,
                  analytic=analytic, env={"device_kind": "cpu", "device_count": 1,
                                          **extra.pop("env", {})}, **extra)


def test_rows_deltas_and_what_each_column_covers():
    out = text([row(0, "base", temp=2 * 2**20, total=4 * 2**20),
                row(1, "half", temp=2**20, total=3 * 2**20)])
    assert "temp/dev" in out and "total/dev" in out and "saved/all" in out
    assert "params/dev" not in out  # nothing is sharded: the whole-model column is enough
    assert "1.0 MiB (-50%)" in out and "3.0 MiB (-25%)" in out
    assert "'/dev': one device" in out and "'/all': the whole model or global batch" in out


def test_sharded_rows_show_per_device_state():
    sharded = row(1, "fsdp", temp=2**20, total=2**21,
                  analytic={"param_bytes_per_device": 500, "opt_state_bytes_per_device": 1000})
    out = text([row(0, "dp", temp=2**20, total=2**21), sharded])
    assert "params/dev" in out and "opt/dev" in out
    assert "params/all" not in out  # room for the per-device one


def test_failed_rows_say_their_status_and_the_caption_says_why():
    out = text([row(0, "ok", temp=2**20, total=2**21),
                row(1, "broken", temp=0, total=0, status="error", error="RuntimeError: x")])
    assert "error" in out and "error in row 1: RuntimeError: x" in out


def test_fits_column_and_its_basis_per_backend():
    tpu = dict(platform="tpu", env={"device_memory_bytes": 16 * 2**30,
                                    "device_memory_source": "libtpu"})
    fits = row(0, "small", temp=2**30, total=5 * 2**30,
               compiled={"peak_bytes": 3 * 2**30, "fits_basis": "peak_bytes", "fits": True,
                         "headroom_bytes": 13 * 2**30}, **tpu)
    out = text([fits])
    assert "peak/dev" in out and "yes (13.0 GiB free)" in out
    assert "fits: compiled.peak_bytes: libtpu's own peak" in out
    assert "against 16.0 GiB per device (libtpu)" in out
    assert fmt_headroom(-2**30) == "NO (short 1.0 GiB)" and fmt_headroom(None) == "-"


def test_loop_counted_figures_are_marked_as_lower_bounds():
    out = text([row(0, "scan", temp=1, total=2, compiled={"cost_has_loops": True})])
    assert ">=1.0G" in out and "lower bounds" in out


def test_residual_rows_group_and_sort_by_bytes():
    res = [Residual((2, 4), "float32", 32, "named 'query' from a.py:1 (f)"),
           Residual((2, 4), "float32", 32, "named 'query' from a.py:1 (f)"),
           Residual((8,), "bfloat16", 100, "output of mul from b.py:2 (g)")]
    rows = residual_rows(res)
    assert rows[0][0] == "mul" and rows[0][5] == 100
    assert rows[1][:2] == ("query", "a.py:1 (f)") and rows[1][4:] == (2, 64)
