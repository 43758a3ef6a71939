"""Measures one configuration: compile mode in this process, run mode in a fresh one.

``compile``: the training step is traced and compiled on abstract shapes (nothing allocated)
and XLA's memory and cost analysis is read. ``run``: a subprocess (``python -m jaxmem.worker``)
allocates real arrays, times steps and reads device ``memory_stats()``; a fresh process is the
only way to get a peak that belongs to this configuration alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from typing import Any

import jax

from jaxmem import _convert, analytic
from jaxmem.config import Config
from jaxmem.experiment import GridPoint
from jaxmem.measure import MemoryReport, compile_timed
from jaxmem.record import Record, environment
from jaxmem.step import Program, build_program


def backend_notes(config: Config, platform: str) -> list[str]:
    """Caveats about compiled numbers on ``platform`` for this configuration."""
    notes = []
    if platform == "cpu" and config.precision.policy != "fp32":
        notes.append("XLA:CPU computes bf16/fp16 in f32, so compiled bytes do not show the "
                     "saving of lower precision; see analytic.residual_bytes, or compile for "
                     "a GPU/TPU target")
    model = config.model
    if (platform == "cpu" and config.remat.policy != "none"
            and getattr(model, "stack", "scan") == "loop"):
        notes.append("XLA:CPU may schedule the recomputation of a Python-loop stack early, "
                     "hiding remat savings in compiled bytes; use model.stack=scan on CPU")
    return notes


def analytic_numbers(program: Program) -> dict[str, Any]:
    """Parameter, optimizer-state, batch and residual bytes of a program (whole model)."""
    return {
        "param_count": analytic.tree_count(program.params),
        "param_bytes": analytic.tree_bytes(program.params),
        "opt_state_bytes": analytic.tree_bytes(program.opt_state),
        "batch_bytes": analytic.tree_bytes(program.batch),
        # gradients are taken for the parameters only: rest and batch get no tangent
        "residual_bytes": analytic.residual_bytes(
            lambda p, r, b: program.objective(p, jax.lax.stop_gradient(r),
                                              jax.lax.stop_gradient(b))[0],
            program.params, program.rest, program.batch,
        ),
    }


def measure_compile(program: Program) -> tuple[Any, dict[str, Any]]:
    """Compiles the program's step on abstract arguments: ``(compiled, record sections)``."""
    compiled, lower_s, compile_s = compile_timed(program.step, *program.abstract_args)
    report = MemoryReport.from_compiled(compiled, lower_seconds=lower_s,
                                        compile_seconds=compile_s)
    devices = list(program.mesh.devices.flat)
    sections = {
        "env": environment(devices),
        "analytic": analytic_numbers(program),
        "compiled": report.to_dict(),
        "notes": backend_notes(program.config, report.platform),
    }
    return compiled, sections


def measure_point(experiment: str, point: GridPoint, mode: str) -> Record:
    """One grid point measured in ``mode``; failures become an error row, never an exception."""
    config_dict = _convert.to_dict(point.config)
    base = dict(experiment=experiment, index=point.index, name=point.name, mode=mode,
                config=config_dict)
    try:
        if mode == "run":
            sections = run_in_subprocess(point.config)
        else:
            _, sections = measure_compile(build_program(point.config))
    except Exception as e:  # a configuration that fails is a row, and the sweep goes on
        return Record(**base, status="error", error=one_line_error(e))
    return Record(**base, status="ok", **sections)


def run_in_subprocess(config: Config) -> dict[str, Any]:
    """Runs ``python -m jaxmem.worker`` on ``config``; returns its record sections."""
    with tempfile.TemporaryDirectory(prefix="jaxmem-") as tmp:
        spec, result = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
        with open(spec, "w", encoding="utf-8") as f:
            json.dump(_convert.to_dict(config), f)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "jaxmem.worker", spec, result],
                capture_output=True, text=True, timeout=config.measure.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"worker timed out after {config.measure.timeout_s:g} s") from None
        if not os.path.exists(result):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"worker exited with {proc.returncode}: " + " | ".join(tail))
        with open(result, encoding="utf-8") as f:
            payload = json.load(f)
    if payload.get("error"):
        raise RuntimeError(payload["error"])
    return payload["sections"]


def one_line_error(e: BaseException) -> str:
    """``Type: message`` on one line (first three lines joined), for result rows."""
    msg = f"{type(e).__name__}: {e}".strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return " | ".join(lines[:3])[:2000] if lines else type(e).__name__


def describe_failure(e: BaseException) -> str:
    """A traceback string for worker logs."""
    return "".join(traceback.format_exception(e))
