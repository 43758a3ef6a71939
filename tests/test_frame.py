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


def test_plot_draws_a_png_and_refuses_unknown_fields(quickstart_records, tmp_path, cli_runner):
    from jaxmem.cli import cli

    with results.Writer(tmp_path / "q") as writer:
        for record in quickstart_records.values():
            writer.append(record)
    done = cli_runner.invoke(cli, ["plot", str(tmp_path / "q"), "--x",
                                   "config.precision.policy", "--y", "compiled.temp_bytes",
                                   "--by", "config.remat.policy"])
    assert done.exit_code == 0, done.output
    png = tmp_path / "q" / "compiled_temp_bytes_vs_config_precision_policy.png"
    assert done.stdout.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    bad = cli_runner.invoke(cli, ["plot", str(tmp_path / "q"), "--x", "config.nope"])
    assert bad.exit_code == 2 and "--x: not a field of these results" in bad.output
