"""Test set-up shared by tests/ and the doctests in jaxmem/: CPU with 8 fake devices, strict
numerics. Runs before jax is imported anywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
# pytest-xdist hands its workers the terminal's COLUMNS; tables would follow it (a test that
# wants a width passes COLUMNS itself)
os.environ.pop("COLUMNS", None)
# XLA:CPU's LLVM optimisation level changes the machine code, not the buffer assignment the
# suite measures (tests/test_compiled.py checks the figures are the same at the default level);
# -O0 makes its compiles about a third faster.
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# --------------------------------------------- notebook wall times, in the run's summary

_NOTEBOOK_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Collects ``notebook_seconds`` (``record_property``), also from xdist workers."""
    if report.when == "call":
        for name, value in report.user_properties:
            if name == "notebook_seconds":
                _NOTEBOOK_SECONDS[report.nodeid.rsplit("[", 1)[-1].rstrip("]")] = value


def pytest_terminal_summary(terminalreporter):
    if _NOTEBOOK_SECONDS:
        terminalreporter.write_sep("-", "notebook wall times")
        for name, seconds in sorted(_NOTEBOOK_SECONDS.items()):
            terminalreporter.write_line(f"{name:28s} {seconds:6.1f} s")
