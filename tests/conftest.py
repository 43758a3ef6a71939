"""Fixtures: the shipped experiments, small configurations, a CLI runner."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

import jaxmem

ROOT = Path(__file__).resolve().parents[1]
# The CLI's defaults for a person (a worker process per core, JAX's compilation cache in the
# user's cache folder) are tested where they matter (tests/test_pool.py); elsewhere the CLI
# compiles in the test process and leaves JAX's configuration and ~/.cache alone.
os.environ.setdefault("JAXMEM_WORKERS", "0")
os.environ.setdefault("JAXMEM_CACHE", "0")
EXPERIMENTS = ROOT / "experiments"
# A shell that starts the suite in the background (`make test &`, some CI runners) hands it
# SIGINT ignored, and every process it starts inherits that: the Ctrl-C tests' commands would
# never see their SIGINT. Catching it here makes exec() give the children the default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def quickstart() -> jaxmem.Experiment:
    return jaxmem.Experiment.from_yaml(EXPERIMENTS / "quickstart.yaml")


@pytest.fixture(scope="session")
def quickstart_records(quickstart) -> dict[str, jaxmem.Record]:
    """The quickstart sweep compiled once for the session, by configuration name."""
    return {r.name: r for r in jaxmem.run(quickstart)}


@pytest.fixture
def workdir(request, tmp_path, monkeypatch) -> Path:
    """A working directory holding the test module's ``FACTORIES`` (file name -> Python
    source, for custom-model factories), the repository importable."""
    for name, text in getattr(request.module, "FACTORIES", {}).items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    return tmp_path


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()
