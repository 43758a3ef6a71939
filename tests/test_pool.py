"""Sweeps that survive: worker processes, timeouts, crashes, Ctrl-C, kill -9 and --resume, the
lock, and result files that stay a consistent pair."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jaxmem
from jaxmem import results

ROOT = Path(__file__).resolve().parents[1]
FACTORY = """\
import os, sys, time
import examples.custom_model as m

def workload(batch_size, width=8, how="ok", remat_policy="none"):
    if how == "abort":
        os.abort()
    if how == "hang":
        time.sleep(1000)
    if how == "slow":
        time.sleep(float(os.environ.get("JAXMEM_TEST_SLOW", "6")))
    return m.workload(batch_size, width=width, depth=1)
"""


def experiment(workdir: Path, hows: list[dict], timeout: float = 60) -> Path:
    (workdir / "faulty.py").write_text(FACTORY)
    path = workdir / "exp.yaml"
    path.write_text(
        "name: faulty\nmodel: {kind: custom, factory: 'faulty:workload'}\n"
        f"measure: {{timeout_s: {timeout}}}\n"
        f"sweep: {{model.options: {json.dumps(hows)}}}\n")
    return path


def jaxmem_cli(workdir: Path, *args: str, tmpdir: Path | None = None,
               **popen) -> subprocess.Popen:
    """The console command in its own process, the repository importable (``tmpdir``: its
    own temporary directory)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXMEM_WORKERS": "2",
           "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)])}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.Popen(
        [sys.executable, "-m", "jaxmem.cli", *args], cwd=workdir, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / results.JSONL).read_text().splitlines()]


def assert_consistent_pair(out: Path) -> None:
    """results.csv holds exactly results.jsonl's rows."""
    with open(out / results.CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["key"] for r in table] == [r["key"] for r in rows(out)]


def workers_of(pid: int) -> list[str]:
    """Worker processes started for parent ``pid`` (still alive, even if reparented)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()  # python -c <boot> PARENT FOLDER ...
            if "jaxmem.worker" in line and f" {pid} " in line and "jaxmem.cli" not in line]


def pool_folders() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("jaxmem-pool-*")}


def test_a_crash_and_a_timeout_are_rows_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))  # workers
    path = experiment(tmp_path, [{"how": "ok"}, {"how": "abort"}, {"how": "hang"},
                                 {"how": "ok", "width": 16}], timeout=20)
    before = pool_folders()
    records = jaxmem.run(jaxmem.Experiment.from_yaml(path), workers=2, out=tmp_path / "out")
    assert [r.status for r in records] == ["ok", "crashed", "timeout", "ok"]
    assert "killed by SIGABRT" in records[1].error
    assert "measure.timeout_s = 20 s" in records[2].error
    assert records[3].analytic["param_count"] > records[0].analytic["param_count"]
    assert [r["name"] for r in rows(tmp_path / "out")] == [r.name for r in records]
    assert_consistent_pair(tmp_path / "out")
    assert pool_folders() <= before  # the pool's folder is gone


def test_pool_and_in_process_give_the_same_numbers(tmp_path, quickstart):
    exp = jaxmem.Experiment.from_dict(quickstart.to_dict(), [
        "sweep.remat=[none,full]", "sweep.precision=[fp32]", "model.num_layers=2"])
    pooled = jaxmem.run(exp, workers=2)
    here = jaxmem.run(exp)
    for a, b in zip(pooled, here, strict=True):
        assert (a.name, a.key) == (b.name, b.key)
        for field in ("argument_bytes", "temp_bytes", "total_bytes", "flops"):
            assert a.compiled[field] == b.compiled[field], field
        assert a.analytic == b.analytic


def test_kill_9_then_resume_keeps_finished_rows_byte_for_byte(tmp_path):
    path = experiment(tmp_path, [{"how": "ok"}, {"how": "slow"}, {"how": "slow", "width": 4},
                                 {"how": "ok", "width": 16}])
    proc = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--no-progress")
    jsonl = tmp_path / "out" / results.JSONL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (jsonl.exists() and jsonl.read_text().strip()):
        time.sleep(0.2)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate()
    kept = jsonl.read_bytes()
    assert kept and len(kept.splitlines()) < 4
    time.sleep(1.5)  # the workers notice their parent is gone
    assert not workers_of(proc.pid)

    again = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--no-progress")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "--resume" in err and "--force" in err

    resumed = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--resume",
                         "--no-progress")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    lines = jsonl.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4 and all(json.loads(ln)["status"] == "ok" for ln in lines)
    for line in kept.splitlines(keepends=True):  # finished rows: the same bytes
        assert line in lines
    assert_consistent_pair(tmp_path / "out")


def test_ctrl_c_keeps_finished_rows_and_exits_130(tmp_path):
    path = experiment(tmp_path, [{"how": "ok"}, {"how": "hang"}, {"how": "hang", "width": 4}])
    proc = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--no-progress")
    jsonl = tmp_path / "out" / results.JSONL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (jsonl.exists() and jsonl.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: 1 finished configuration(s) kept" in err
    assert "Traceback" not in err and "Aborted" not in err
    assert [r["status"] for r in rows(tmp_path / "out")] == ["ok"]
    assert_consistent_pair(tmp_path / "out")
    assert not workers_of(proc.pid)


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    path = experiment(tmp_path, [{"how": "slow"}])
    first = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--no-progress")
    lock = tmp_path / "out" / results.LOCK
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not lock.exists():
        time.sleep(0.1)
    time.sleep(0.5)
    second = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--force", "--no-progress")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert err.strip().splitlines() == [
        "jaxmem: error: --out: another jaxmem run is writing to this folder (it holds "
        ".jaxmem.lock); wait for it or choose another --out, got 'out'"]
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert [r["status"] for r in rows(tmp_path / "out")] == ["ok"]


def test_the_persistent_cache_serves_a_second_run_on_cpu(tmp_path, quickstart, monkeypatch):
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache even this
    exp = jaxmem.Experiment.from_dict(quickstart.to_dict(), [
        "sweep.remat=[none]", "sweep.precision=[fp32]", "model.num_layers=2"])
    cache = tmp_path / "xla"
    (cold,) = jaxmem.run(exp, workers=1, cache_dir=cache)
    (warm,) = jaxmem.run(exp, workers=1, cache_dir=cache)
    assert cold.compiled["cache_hit"] is False and warm.compiled["cache_hit"] is True
    assert any(cache.iterdir())
    assert warm.compiled["temp_bytes"] == cold.compiled["temp_bytes"]


def test_killing_the_parent_in_run_mode_ends_its_worker_and_its_folder(tmp_path):
    path = experiment(tmp_path, [{"how": "slow"}])
    # a temporary directory of its own: tests running in parallel make run folders too
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = jaxmem_cli(tmp_path, "run", str(path), "--out", "out", "--mode", "run",
                      "--no-progress", tmpdir=tmpdir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not workers_of(proc.pid):
        time.sleep(0.2)
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert workers_of(proc.pid), (proc.poll(), [ln for ln in ps.splitlines() if "jaxmem" in ln])
    while time.monotonic() < deadline and not list(tmpdir.glob("jaxmem-run-*")):
        time.sleep(0.2)
    assert list(tmpdir.glob("jaxmem-run-*"))  # the worker's folder, made in its TMPDIR
    proc.kill()
    proc.communicate()
    time.sleep(1.5)
    assert not workers_of(proc.pid)
    assert not list(tmpdir.glob("jaxmem-run-*"))
