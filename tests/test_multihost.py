"""Two JAX processes x 2 CPU devices each, measuring one experiment together (gloo on
127.0.0.1): both compile for the 4 global devices, process 0 gathers and writes one file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multihost

EXPERIMENT = """\
name: multihost
model: {kind: gpt, num_layers: 2, d_model: 64, num_heads: 4, vocab_size: 256, seq_len: 32,
        stack: scan}
data: {batch_size: 8}
measure: {steps: 2, warmup_steps: 1}
sweep:
  cases:
    - {sharding: dp, mesh: {data: -1}}
    - {sharding: fsdp, mesh: {fsdp: -1}}
"""


def free_port(span: int = 4) -> int:
    """A port with the next ``span`` ports free too (run-mode workers use them)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for p in range(port, port + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free ports")


def launch(tmp_path: Path, *args: str) -> list[subprocess.CompletedProcess]:
    path = tmp_path / "multihost.yaml"
    path.write_text(EXPERIMENT)
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "jaxmem.cli", "run", str(path), "--out", str(tmp_path / "out"),
         "--no-progress", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(i), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def records(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("mode", ["compile", "run"])
def test_two_processes_measure_one_experiment(tmp_path, mode):
    p0, p1 = launch(tmp_path, "--mode", mode)
    assert p0.returncode == 0, p0.stderr[-3000:]
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert "process 0 writes the results" in p1.stdout
    assert "multihost: 2 configurations" in p0.stdout
    rows = records(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    for r in rows:
        assert r["env"]["process_count"] == 2
        assert r["env"]["device_count"] == 4
    dp, fsdp = rows
    # FSDP over the 4 devices of both processes divides the training state by 4
    state = fsdp["analytic"]["param_bytes"] + fsdp["analytic"]["opt_state_bytes"]
    per_device = fsdp["compiled"]["argument_bytes"] - fsdp["analytic"]["batch_bytes_per_device"]
    assert per_device == pytest.approx(state / 4, rel=0.01)
    if mode == "compile":
        for r in rows:  # both processes compiled the same program
            totals = r["compiled"]["total_bytes_per_process"]
            assert totals == [r["compiled"]["total_bytes"]] * 2
    else:
        for r in rows:  # each process stepped its own devices
            assert len(r["runtime"]["step_time_s_per_process"]) == 2
            assert all(t > 0 for t in r["runtime"]["step_time_s_per_process"])
            assert len(r["runtime"]["host_peak_rss_bytes_per_process"]) == 2
