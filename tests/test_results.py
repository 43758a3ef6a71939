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
