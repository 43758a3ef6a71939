"""Fixtures: the shipped experiments, small configurations, a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import jaxmem

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="session")
def quickstart() -> jaxmem.Experiment:
    return jaxmem.Experiment.from_yaml(EXPERIMENTS / "quickstart.yaml")


@pytest.fixture(scope="session")
def quickstart_records(quickstart) -> dict[str, jaxmem.Record]:
    """The quickstart sweep compiled once for the session, by configuration name."""
    return {r.name: r for r in jaxmem.run(quickstart)}


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()
