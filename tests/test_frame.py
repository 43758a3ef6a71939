"""``jaxmem.load``: results as a DataFrame with their own types."""

from __future__ import annotations

import sys

import pytest

import jaxmem
from jaxmem import results


def test_a_results_folder_loads_with_numbers_and_lists(quickstart_records, tmp_path):
    with results.Writer(tmp_path / "q") as writer:
        for record in quickstart_records.values():
            writer.append(record)
    df = jaxmem.load(tmp_path / "q")
    assert len(df) == len(quickstart_records) == 8
    assert list(df["name"]) == list(quickstart_records)
    assert df["compiled.temp_bytes"].dtype.kind in "iu"
    assert df["estimate.error"].dtype.kind == "f"
    assert all(isinstance(n, list) for n in df["notes"])
    assert set(df["config.remat.policy"]) == {"none", "dots", "minimal", "full"}
    # the same frame from the records in memory
    assert jaxmem.load(list(quickstart_records.values())).equals(df)
    full = df[df["config.remat.policy"] == "full"]
    assert (full["compiled.temp_bytes"] < df["compiled.temp_bytes"].max()).all()


def test_without_pandas_the_error_says_what_to_install(monkeypatch, quickstart_records):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"jaxmem\[report\]"):
        jaxmem.load(list(quickstart_records.values()))
