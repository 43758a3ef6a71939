"""The out-of-memory doctor on rows that do not fit (the TPU case is in test_fits)."""

from __future__ import annotations

from jaxmem import _convert
from jaxmem.config import Config
from jaxmem.doctor import Doctor, doctor_line, needs
from jaxmem.estimate import estimate
from jaxmem.fit import Probe
from jaxmem.record import Record

GPT = {"kind": "gpt", "vocab_size": 256, "seq_len": 64, "num_layers": 2, "d_model": 64,
       "num_heads": 4, "stack": "scan"}


def _row(**sections) -> Record:
    return Record(experiment="e", index=3, name="x", mode="compile", **sections)


def _by_estimate(config: Config) -> Probe:
    return Probe(0, estimate(config).total_bytes, True)


def test_a_row_over_memory_gets_the_cheapest_change_that_fits():
    config = _convert.from_dict(Config, {"model": GPT, "data": {"batch_size": 32}})
    need = estimate(config).total_bytes
    row = _row(status="ok", compiled={"fits": False, "fits_basis": "total_bytes",
                                      "total_bytes": need})
    section = Doctor(measure=_by_estimate)(row, config, need // 2, may_compile=True)
    assert section["needs_bytes"] == need and section["has_bytes"] == need // 2
    assert section["sets"] and section["verified"]
    assert section["compiled_bytes"] <= need // 2
    line = doctor_line(section)
    assert line.startswith("needs ") and "fits with: --set " in line and "verified" in line


def test_rows_that_fit_or_cannot_be_checked_get_nothing_or_say_why():
    config = _convert.from_dict(Config, {"model": GPT})
    ok = _row(status="ok", compiled={"fits": True})
    assert Doctor()(ok, config, 2**30, may_compile=True) == {}
    oom = _row(status="oom", compiled={"oom_required_bytes": 10 * 2**30})
    assert needs(oom) == 10 * 2**30
    unverified = Doctor()(oom, config, 2**30, may_compile=False)
    assert not unverified["verified"] and "not verified" in unverified["why"]
    spent = Doctor(verify_seconds=0)(oom, config, 2**30, may_compile=True)
    assert "doctor time" in spent["why"]
    hopeless = Doctor()(oom, config, 1024, may_compile=True)
    assert "nothing in the search space fits" in hopeless["why"] and "sets" not in hopeless
