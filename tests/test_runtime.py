"""Run mode: one fresh subprocess per configuration, real arrays, timed steps."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest

import jaxmem
from jaxmem import results

TINY_GPT = {
    "name": "run-mode",
    "model": {"kind": "gpt", "vocab_size": 64, "seq_len": 32, "num_layers": 2, "d_model": 32,
              "num_heads": 2, "stack": "scan"},
    "data": {"batch_size": 4},
    "measure": {"mode": "run", "warmup_steps": 1, "steps": 3},
    "sweep": {"remat": ["none", "full"]},
}


def test_run_mode_times_steps_in_subprocesses(tmp_path):
    exp = jaxmem.Experiment.from_dict(TINY_GPT)
    records = jaxmem.run(exp, out=tmp_path)
    assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
    for r in records:
        rt = r.runtime
        assert r.mode == "run"
        assert len(rt["step_times_s"]) == 3 and rt["step_time_s"] > 0
        assert sorted(rt["step_times_s"])[1] == rt["step_time_s"]  # the median
        assert rt["final_loss"] > 0
        # CPU has no device memory_stats(): said so, and host memory reported instead
        assert rt["device_stats"].startswith("unavailable")
        assert "device_peak_bytes" not in rt
        assert rt["host_peak_rss_bytes"] > 50 * 2**20
        assert r.compiled["temp_bytes"] > 0  # the worker reports the compiled numbers too
    assert results.read(tmp_path)[1].runtime == records[1].runtime


def test_mode_argument_overrides_the_file(tmp_path):
    exp = jaxmem.Experiment.from_dict({**TINY_GPT, "sweep": {}})
    (record,) = jaxmem.run(exp, mode="compile")
    assert record.mode == "compile" and record.runtime == {}


def test_worker_failure_is_a_row(tmp_path, monkeypatch):
    # a factory that imports in the parent but fails inside the worker process
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fails_in_worker.py").write_text(
        "import os\n"
        "import examples.custom_model as m\n"
        "def workload(batch_size):\n"
        "    w = m.workload(batch_size, width=8, depth=1)\n"
        "    if os.environ.get('JAXMEM_TEST_PARENT') != str(os.getpid()):\n"
        "        raise MemoryError('pretend out of memory')\n"
        "    return w\n"
    )
    monkeypatch.setenv("JAXMEM_TEST_PARENT", str(os.getpid()))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), str(Path(__file__).resolve().parents[1]), *sys.path]))
    exp = jaxmem.Experiment.from_dict({
        "model": {"kind": "custom", "factory": "fails_in_worker:workload"},
        "measure": {"mode": "run", "steps": 1}})
    (record,) = jaxmem.run(exp)
    assert record.status == "oom"  # running out of host memory is out of memory too
    assert "MemoryError: pretend out of memory" in record.error


def test_run_mode_leaves_the_parent_without_a_backend(tmp_path):
    """The parent must not start the accelerator: it would hold memory the worker measures."""
    import subprocess

    script = (
        "import jaxmem\n"
        "from jax._src import xla_bridge\n"
        f"exp = jaxmem.Experiment.from_dict({TINY_GPT!r}, ['sweep.remat=[none]', 'mesh.data=64',"
        " 'data.batch_size=64'])\n"
        "(record,) = jaxmem.run(exp)\n"
        "print(record.status, 'spans 64 devices' in record.error)\n"
        "print('initialised', xla_bridge.backends_are_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    # the worker checked the mesh on its own devices: a row, not a crash
    assert out.stdout.split() == ["error", "True", "initialised", "False"]


def test_run_mode_profiles_a_trace_and_a_device_memory_profile(tmp_path):
    exp = jaxmem.Experiment.from_dict({
        **TINY_GPT, "sweep": {},
        "measure": {**TINY_GPT["measure"], "profile": "both", "profile_steps": 2}})
    (r,) = jaxmem.run(exp, out=tmp_path / "out")
    assert r.status == "ok", r.error
    trace, memory = Path(r.runtime["profile_trace_dir"]), Path(r.runtime["profile_memory_path"])
    assert trace.parent == memory.parent == tmp_path / "out" / "artifacts" / "000-base"
    # the layout xprof / TensorBoard's profile plugin read: plugins/profile/<run>/<host>.xplane.pb
    (xplane,) = trace.glob("plugins/profile/*/*.xplane.pb")
    assert xplane.stat().st_size > 1000
    # pprof: a gzipped profile whose stacks lead to the code that made the step's arrays
    text = gzip.decompress(memory.read_bytes())
    assert b"jaxmem/program.py" in text and b"space" in text
    assert r.runtime["profile_steps"] == 2 and len(r.runtime["step_times_s"]) == 3


def test_profile_outside_run_mode_is_bad_input(tmp_path):
    exp = jaxmem.Experiment.from_dict({**TINY_GPT, "sweep": {},
                                       "measure": {"profile": "trace"}})
    with pytest.raises(jaxmem.ConfigError, match="measure.profile: profiles a run"):
        jaxmem.run(exp, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
