"""The jaxmem command: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jaxmem
from jaxmem import results
from jaxmem.cli import cli

TINY = """\
name: tiny
model: {kind: mlp, in_features: 16, hidden: [32, 32], out_features: 4}
data: {batch_size: 8}
sweep:
  remat: [none, full]
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_version(cli_runner):
    result = cli_runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert jaxmem.__version__ in result.output


def test_run_writes_results_and_prints_table(cli_runner, tiny, tmp_path):
    out = tmp_path / "out"
    result = cli_runner.invoke(cli, ["run", str(tiny), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "remat=none" in result.stdout and "remat=full" in result.stdout
    assert "temp" in result.stdout
    rows = [json.loads(line) for line in (out / results.JSONL).read_text().splitlines()]
    assert [r["name"] for r in rows] == ["remat=none", "remat=full"]
    assert all(r["status"] == "ok" for r in rows)
    header = (out / results.CSV).read_text().splitlines()[0].split(",")
    assert "compiled.temp_bytes" in header and "config.remat.policy" in header
    shown = cli_runner.invoke(cli, ["show", str(out)])
    assert shown.exit_code == 0 and "remat=full" in shown.stdout


def _bad_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text or "model: {kind: gpt}\n")  # an empty file is bad input itself
    return path


BAD_INPUTS = {
    "unknown key": ("model: {kind: gpt, layers: 3}\n", [], "model: unknown key, got 'layers'"),
    "wrong type": ("model: {kind: gpt, d_model: big}\n", [], "model.d_model: expected an integer"),
    "unknown model kind": ("model: {kind: rnn}\n", [], "model.kind: unknown model kind"),
    "unknown model name": ("model: {kind: custom, factory: 'no_such_pkg.models:make'}\n", [],
                           "model.factory: cannot import module"),
    "non-positive size": ("data: {batch_size: 0}\n", [], "data.batch_size: must be positive"),
    "heads not dividing": ("model: {kind: gpt, d_model: 100, num_heads: 3}\n", [],
                           "model.num_heads: must divide d_model=100"),
    "unknown remat": ("remat: sometimes\n", [], "remat.policy: unknown remat policy"),
    "malformed yaml": ("model: {kind: gpt\n", [], "bad.yaml: malformed YAML"),
    "bad --set syntax": ("", ["--set", "remat"], "--set: expected KEY=VALUE"),
    "unknown --set key": ("", ["--set", "model.widht=3"], "model: unknown key, got 'widht'"),
    "bad --set value": ("", ["--set", "model.num_layers=many"],
                        "model.num_layers: expected an integer"),
    "bad mode": ("", ["--mode", "profile"], "--mode: unknown mode, got 'profile'"),
    "mesh larger than target": ("mesh: {data: 64}\ndata: {batch_size: 64}\n", [],
                                "mesh: data=64 fsdp=1 tensor=1 spans 64 devices but the "
                                "target has 8"),
    "mesh axes not dividing": ("mesh: {data: 3, tensor: -1}\ndata: {batch_size: 6}\n", [],
                               "mesh: data=3 fsdp=1 tensor=-1: the fixed axes (3 devices) do "
                               "not divide the target's 8 devices"),
    "two free mesh axes": ("mesh: {data: -1, fsdp: -1}\n", [],
                           "mesh.fsdp: only one axis can be -1 (already data)"),
    "unknown sharding preset": ("sharding: zero\n", [],
                                "sharding.preset: unknown sharding preset, got 'zero'"),
    "bad tpu target": ("target: tpu:v5e:banana\n", [],
                       "target.name: expected tpu:<v4|v5e|v5p|v6e>:<AxB[xC]>"),
    "unknown gpu kind": ("target: gpu:k80x8\n", [], "target.name: unknown GPU kind"),
    "unknown target": ("target: moon\n", [], "target.name: unknown target, got 'moon'"),
    "cpu target larger than the process": ("target: cpu:4096\n", [],
                                           "needs 4096 CPU devices but this process has"),
    "batch not divisible by all devices": ("mesh: {data: -1}\ndata: {batch_size: 6}\n", [],
                                           "data.batch_size: must be divisible by the 8 devices"),
    "heads not splitting over tensor": ("sharding: tp\nmesh: {tensor: -1}\n", [],
                                        "model.num_heads: must be divisible by the 8 devices"),
    "--set inside a value": ("model: {kind: custom, factory: 'a.b:c'}\n",
                             ["--set", "model.options.width=3"],
                             "model.options: is a value, not a section"),
    "empty name": ("", ["--set", "name="], "name: expected a folder name"),
    "run on a virtual target": ("target: tpu:v5e:2x2\n", ["--mode", "run"],
                                "target.name: is compile-only"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli_runner, tmp_path, case):
    text, args, expected = BAD_INPUTS[case]
    path = _bad_yaml(tmp_path, text)
    out = tmp_path / "out"
    result = cli_runner.invoke(cli, ["run", str(path), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("jaxmem: error: ")
    assert not out.exists()


def test_show_rejects_a_file_that_is_not_results(cli_runner, tmp_path):
    bogus = tmp_path / "results.jsonl"
    bogus.write_text('{"a": 1}\n')
    result = cli_runner.invoke(cli, ["show", str(bogus)])
    assert result.exit_code == 2
    assert "line 1 is not a jaxmem result row" in result.stderr


def test_missing_file_exits_2(cli_runner, tmp_path):
    result = cli_runner.invoke(cli, ["run", str(tmp_path / "nope.yaml"),
                                     "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nope.yaml: no such experiment file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_value_in_a_sweep_exits_2_before_anything_runs(cli_runner, tmp_path):
    path = _bad_yaml(tmp_path, "model: {kind: mlp}\nsweep: {data.batch_size: [4, 0.5]}\n")
    result = cli_runner.invoke(cli, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "data.batch_size: expected an integer, got 0.5" in result.stderr
    assert not (tmp_path / "o").exists()


def test_runtime_failure_becomes_a_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flaky_models.py").write_text(
        "import examples.custom_model as m\n"
        "def workload(batch_size, width=16):\n"
        "    if width > 16:\n"
        "        raise RuntimeError('width too large for this test')\n"
        "    if width < 16:\n"
        "        len(5)  # a bug in the factory: a TypeError that is not about its options\n"
        "    return m.workload(batch_size, width=width, depth=1)\n"
    )
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    exp = jaxmem.Experiment.from_dict({
        "name": "flaky", "model": {"kind": "custom", "factory": "flaky_models:workload"},
        "sweep": {"model.options": [{"width": 16}, {"width": 32}, {"width": 8}]},
    })
    records = jaxmem.run(exp, out=tmp_path / "out")
    assert [r.status for r in records] == ["ok", "error", "error"]
    assert "width too large" in records[1].error
    assert "TypeError" in records[2].error
    assert len(results.read(tmp_path / "out")) == 3


@pytest.mark.skipif(shutil.which("jaxmem") is None and not Path(sys.executable).with_name(
    "jaxmem").exists(), reason="console script not installed")
def test_console_script_exit_codes(tmp_path):
    script = Path(sys.executable).with_name("jaxmem")
    exe = str(script) if script.exists() else "jaxmem"
    ok = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and jaxmem.__version__ in ok.stdout
    bad = subprocess.run([exe, "run", str(tmp_path / "missing.yaml")], capture_output=True,
                         text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"jaxmem: error: {tmp_path / 'missing.yaml'}: no such experiment file"]


def test_commands_print_nothing_of_libtpu_without_jax_platforms(tmp_path):
    """With libtpu installed and JAX_PLATFORMS unset, a command on a machine without TPU
    chips prints only its own lines (the TPU is left out, jaxmem._platform)."""
    import os
    import subprocess
    import sys

    from jaxmem import _platform

    if _platform.tpu_chips_present():
        pytest.skip("a TPU VM: JAX's default platform is the TPU")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-m", "jaxmem.cli", "targets"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert "tpu:v5e" in done.stdout


def test_tables_fit_the_terminal_and_say_what_they_left_out(quickstart_records, tmp_path,
                                                             cli_runner):
    out = tmp_path / "q"
    with results.Writer(out) as writer:
        for record in quickstart_records.values():
            writer.append(record)
    narrow = cli_runner.invoke(cli, ["show", str(out)], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in narrow.stdout  # no number cut
    assert "total/dev" in narrow.stdout and "left out to fit the terminal" in narrow.stdout
    wide = cli_runner.invoke(cli, ["show", str(out), "--wide"], env={"COLUMNS": "80"})
    assert "FLOPs/dev" in wide.stdout and "left out" not in wide.stdout
    chosen = cli_runner.invoke(cli, ["show", str(out), "--columns", "temp/dev,fits"])
    header = next(line for line in chosen.stdout.splitlines() if "temp/dev" in line)
    assert "total/dev" not in header
    bad = cli_runner.invoke(cli, ["show", str(out), "--columns", "speed"])
    assert bad.exit_code == 2 and "--columns: unknown column" in bad.output


def test_large_ratios_read_as_multiples():
    from jaxmem.units import fmt_delta

    assert fmt_delta(256, 1) == "x256" and fmt_delta(25, 2) == "x12.5"
    assert fmt_delta(5, 1) == "+400%" and fmt_delta(1, 4) == "-75%"
