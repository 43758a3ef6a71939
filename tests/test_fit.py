"""``jaxmem fit``: the largest value that fits, checked on both sides by compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxmem import _convert
from jaxmem.cli import cli
from jaxmem.config import Config
from jaxmem.fit import Probe, compiled_bytes, fit

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
GPT = {"kind": "gpt", "vocab_size": 512, "seq_len": 64, "num_layers": 2, "d_model": 64,
       "num_heads": 4, "stack": "scan"}
MiB = 2**20


def _config(**raw) -> Config:
    return _convert.from_dict(Config, {"model": GPT, **raw})


def _synthetic(bytes_of):
    """A measure that counts its calls and answers ``bytes_of(batch)`` without compiling."""
    calls = []

    def measure(config: Config) -> Probe:
        calls.append(config.data.batch_size)
        return Probe(0, bytes_of(config.data.batch_size), True)

    return measure, calls


@pytest.mark.parametrize("per_sample", [1, 3, 7])
def test_monotone_answer_is_the_boundary(per_sample):
    measure, calls = _synthetic(lambda b: 10 * MiB + b * per_sample * MiB)
    result = fit(_config(), budget_bytes=100 * MiB, measure=measure)
    expected = (100 - 10) // per_sample
    assert result.value == expected and result.next_value == expected + 1
    assert result.interval
    assert result.compiles == len(calls) == len(set(calls))
    assert result.bytes_at(result.value) <= 100 * MiB < result.bytes_at(result.next_value)


def test_non_monotone_memory_is_found_and_said():
    """Like GPT-2 small under full remat on CPU: B=3 needs more than B=4."""
    table = {1: 50, 2: 80, 3: 120, 4: 90, 5: 110, 6: 130}
    measure, _ = _synthetic(lambda b: table.get(b, 200) * MiB)
    result = fit(_config(), budget_bytes=100 * MiB, check_below=True, measure=measure)
    assert result.value == 4 and result.next_value == 5
    assert not result.interval and result.below_checked


def test_the_check_below_is_optional():
    """Only 3 does not fit below the answer 4: without the check below the answer (the
    default), one compile fewer, the answer is the same and only what was compiled speaks of
    intervals; the result says whether the value below was compiled."""
    table = {1: 50, 2: 80, 3: 120, 4: 90, 5: 110, 6: 130}
    measure, calls = _synthetic(lambda b: table.get(b, 200) * MiB)
    checked = fit(_config(), budget_bytes=100 * MiB, check_below=True, measure=measure)
    n = len(calls)
    calls.clear()
    skipped = fit(_config(), budget_bytes=100 * MiB, measure=measure)
    assert checked.value == skipped.value == 4 and not checked.interval
    assert len(calls) <= n and skipped.interval == (3 not in calls)
    assert skipped.below_checked == (3 in calls)


def test_only_admissible_values_are_tried():
    """Microbatches and the mesh's batch axes must divide the batch."""
    measure, calls = _synthetic(lambda b: b * MiB)
    config = _config(data={"batch_size": 8, "microbatches": 4}, target="cpu:8",
                     mesh={"data": 2, "tensor": 4}, sharding="tp")
    result = fit(config, budget_bytes=100 * MiB, measure=measure)
    assert all(b % 8 == 0 for b in calls)
    assert result.value == 96 and result.next_value == 104


def test_nothing_fits():
    measure, _ = _synthetic(lambda b: 10**12)
    result = fit(_config(), budget_bytes=MiB, measure=measure)
    assert result.value is None


def test_real_compiles_agree_on_both_sides():
    """The answer fits and the next value does not, by independent compiles."""
    config = _convert.from_dict(Config, {"model": {**GPT, "num_layers": 1}, "remat": "full"})
    result = fit(config, budget_bytes=24 * MiB)
    assert result.value is not None and result.compiles <= 8
    raw = _convert.to_dict(config)

    def compiled(batch: int) -> int:
        c = _convert.from_dict(Config, _convert.set_path(Config, raw, "data.batch_size", batch))
        return compiled_bytes(c).bytes

    assert compiled(result.value) <= 24 * MiB < compiled(result.next_value)


def test_cli_json_and_bad_input(cli_runner):
    sets = ["--set", "sweep.remat=[full]", "--set", "sweep.precision=[fp32]",
            "--set", "model.num_layers=1", "--set", "model.seq_len=64"]
    result = cli_runner.invoke(cli, ["fit", str(QUICKSTART), "--budget", "64MiB", "--json",
                                     *sets])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.splitlines()[0])
    assert {"field", "value", "next_value", "compiles", "budget_bytes"} <= set(row)
    assert row["field"] == "data.batch_size" and row["budget_bytes"] == 64 * MiB
    for bad in (["--vary", "remat.policy"], ["--vary", "data.nope"], ["--budget", "lots"]):
        result = cli_runner.invoke(cli, ["fit", str(QUICKSTART), *bad, *sets])
        assert result.exit_code == 2, (bad, result.output)
        assert "Traceback" not in result.output
