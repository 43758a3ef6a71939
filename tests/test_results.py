"""Result files: both written whole, read back equal, created like the user's own files."""

from __future__ import annotations

import csv
import json
import os

import pytest

from jaxmem import results
from jaxmem.record import FIELDS, Record


def records() -> list[Record]:
    ok = Record("exp", 0, "remat=none", "compile", "ok", config={"remat": {"policy": "none"}},
                env={"backend": "cpu"}, analytic={"param_bytes": 10, "residual_bytes": None},
                compiled={"temp_bytes": 2048, "total_bytes": 4096, "fits": True},
                notes=["a caveat"])
    failed = Record("exp", 1, "remat=full", "compile", "error", error="RuntimeError: boom",
                    config={"remat": {"policy": "full"}})
    return [ok, failed]


def test_round_trip(tmp_path):
    paths = results.write(tmp_path / "out", records())
    assert [p.name for p in paths] == [results.JSONL, results.CSV]
    assert results.read(tmp_path / "out") == records()
    assert results.read(tmp_path / "out" / results.JSONL) == records()


def test_csv_has_documented_columns_first_then_the_configuration(tmp_path):
    results.write(tmp_path, records())
    with open(tmp_path / results.CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    documented = [c for c in header if c in FIELDS]
    assert header[: len(documented)] == documented  # FIELDS order, then the rest
    assert documented == [k for k in FIELDS if k in documented]
    assert header[len(documented):] == ["config.remat.policy"]
    assert json.loads(rows[0]["notes"]) == ["a caveat"]
    assert rows[1]["compiled.temp_bytes"] == "" and rows[1]["status"] == "error"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = results.write(tmp_path, records())
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [mode, mode]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    bad = records()
    bad[0].compiled["oops"] = object()  # not JSON
    with pytest.raises(TypeError):
        results.write(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []
    results.write(tmp_path, records())
    assert sorted(p.name for p in tmp_path.iterdir()) == [results.CSV, results.JSONL]


def test_read_rejects_lines_that_are_not_rows(tmp_path):
    path = tmp_path / results.JSONL
    path.write_text(json.dumps(records()[0].to_dict()) + "\n\n" + '{"name": "x"}\n')
    with pytest.raises(ValueError, match="line 3 is not a jaxmem result row"):
        results.read(path)


GOOD = json.dumps(records()[0].to_dict())
DAMAGED = {
    "cut short": GOOD[:40],
    "NaN bytes": GOOD.replace('"temp_bytes": 2048', '"temp_bytes": NaN'),
    "notes as a string": GOOD.replace('"notes": ["a caveat"]', '"notes": "a caveat"'),
    "an unknown status": GOOD.replace('"status": "ok"', '"status": "great"'),
    "a section that is a list": GOOD.replace('"env": {"backend": "cpu"}', '"env": [1]'),
    "an index that is text": GOOD.replace('"index": 0', '"index": "0"'),
    "a nested figure": GOOD.replace('"temp_bytes": 2048', '"temp_bytes": {"a": 1}'),
    "a JSON list": "[1, 2]",
    "not JSON": "remat=full",
    "Infinity": GOOD.replace('"temp_bytes": 2048', '"temp_bytes": Infinity'),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_show_refuses_a_damaged_file_naming_the_line(cli_runner, tmp_path, case):
    from jaxmem.cli import cli

    path = tmp_path / results.JSONL
    path.write_text(GOOD + "\n" + DAMAGED[case] + "\n")
    result = cli_runner.invoke(cli, ["show", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "line 2 " in line and line.startswith("jaxmem: error: ")


def test_show_reads_odd_but_valid_values_without_a_traceback(cli_runner, tmp_path):
    from jaxmem.cli import cli

    odd = GOOD.replace('"temp_bytes": 2048', '"temp_bytes": "lots"')
    (tmp_path / results.JSONL).write_text(odd + "\n")
    result = cli_runner.invoke(cli, ["show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "lots" in result.stdout


@pytest.mark.parametrize("what", ["missing", "binary"])
def test_show_of_what_is_not_results(cli_runner, tmp_path, what):
    from jaxmem.cli import cli

    if what == "binary":
        (tmp_path / results.JSONL).write_bytes(b"\xff\xfe\x00garbage")
    result = cli_runner.invoke(cli, ["show", str(tmp_path)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_rows_with_a_nan_are_written_as_json(tmp_path):
    from jaxmem.record import finite

    sections, notes = finite({"runtime": {"final_loss": float("nan"), "step_time_s": 1.0}})
    assert sections == {"runtime": {"final_loss": None, "step_time_s": 1.0}}
    assert notes == ["runtime.final_loss was nan (written as null)"]
    bad = records()
    bad[0].runtime["final_loss"] = float("nan")
    with pytest.raises(ValueError):  # the writer never writes NaN: measure cleans it first
        results.write(tmp_path, bad)
