"""Measures one configuration: compile mode in this process, run mode in a fresh one.

``compile``: the training step is traced and compiled on abstract shapes (nothing allocated)
and XLA's memory and cost analysis is read. ``run``: a subprocess (``python -m jaxmem.worker``)
allocates real arrays, times steps and reads device ``memory_stats()``; a fresh process is the
only way to get a peak that belongs to this configuration alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from typing import Any

from jaxmem import _convert, analytic, collectives, distributed, remat, sharding, targets
from jaxmem.build import build_program
from jaxmem.config import Config
from jaxmem.distributed import Cluster
from jaxmem.errors import Unsupported
from jaxmem.experiment import GridPoint
from jaxmem.measure import MemoryReport, compile_timed
from jaxmem.program import Program
from jaxmem.record import Record, environment
from jaxmem.units import fmt_bytes


def backend_notes(config: Config, platform: str) -> list[str]:
    """Caveats about compiled numbers on ``platform`` for this configuration."""
    notes = []
    low_precision = (config.precision.policy != "fp32"
                     or config.inference.weights in ("bfloat16", "int8"))
    if platform == "cpu" and low_precision:
        notes.append("XLA:CPU computes bf16/fp16 in f32, so compiled bytes do not show the "
                     "saving of lower precision; see analytic.residual_bytes, or compile for "
                     "a GPU/TPU target")
    if platform == "cpu" and (config.optimizer.offload or remat.get(config.remat.policy).offloads):
        notes.append("XLA:CPU's memory analysis does not separate pinned host memory: offloaded "
                     "bytes stay in the device columns; compile for a TPU/GPU target to see "
                     "host_* bytes")
    model = config.model
    if (platform == "cpu" and config.remat.policy != "none"
            and getattr(model, "stack", "scan") == "loop"):
        notes.append("XLA:CPU may schedule the recomputation of a Python-loop stack early, "
                     "hiding remat savings in compiled bytes; use model.stack=scan on CPU")
    return notes


def analytic_numbers(program: Program) -> dict[str, Any]:
    """Parameter, state, optimizer-state, batch and residual bytes of a program (whole
    model), plus the task's own figures (e.g. the KV cache)."""
    residuals = program.saved_residuals()
    per_device = sharding.bytes_per_device
    return {
        "param_count": analytic.tree_count(program.params),
        "param_bytes": analytic.tree_bytes(program.params),
        "rest_bytes": analytic.tree_bytes(program.rest),
        "opt_state_bytes": analytic.tree_bytes(program.opt_state),
        "batch_bytes": analytic.tree_bytes(program.batch),
        "param_bytes_per_device": per_device(program.params),
        "opt_state_bytes_per_device": per_device(program.opt_state),
        "batch_bytes_per_device": per_device(program.batch),
        "residual_bytes": None if residuals is None else sum(r.bytes for r in residuals),
        **program.analytic,
    }


def residual_report(config: Config) -> tuple[list[analytic.Residual], str]:
    """The saved residuals of ``config``, each named where possible, and a caption note.

    Residuals inside a scan show up as the scan's stacked outputs, without their checkpoint
    names; a scanned stack is therefore listed as the equivalent Python loop (same blocks, same
    policy), and the note gives the scanned program's own total.
    """
    residuals = build_program(config).saved_residuals()
    if residuals is None:
        raise RuntimeError("this jax version has no residual introspection")
    layers = config.model.layer_count()
    if not layers or not layers[1] or config.remat.nested:
        return residuals, ""
    loop = dataclasses.replace(config, model=dataclasses.replace(config.model, stack="loop"))
    named = build_program(loop).saved_residuals() or []
    total = sum(r.bytes for r in residuals)
    return named, (f"scanned stack listed as a loop to name its values; the scanned program "
                   f"itself keeps {fmt_bytes(total)}")


def measure_compile(program: Program) -> tuple[Any, dict[str, Any]]:
    """Compiles the program's step on abstract arguments: ``(compiled, record sections)``."""
    compiled, lower_s, compile_s = compile_timed(program.step, *program.abstract_args)
    report = MemoryReport.from_compiled(compiled, lower_seconds=lower_s,
                                        compile_seconds=compile_s)
    devices = list(program.mesh.devices.flat)
    memory, source = targets.get(program.config.target.name).memory()
    numbers = report.to_dict()
    numbers.update(collectives.summary(collectives.of_compiled(compiled)))
    if memory is not None:
        numbers["fits"] = report.total_bytes <= memory
        numbers["headroom_bytes"] = memory - report.total_bytes
    sections = {
        "env": {**environment(devices), "device_memory_bytes": memory,
                "device_memory_source": source},
        "analytic": analytic_numbers(program),
        "compiled": numbers,
        "notes": backend_notes(program.config, report.platform),
    }
    return compiled, sections


#: How XLA says that a step cannot fit, at compile time (TPU) or allocation (GPU).
_OOM = re.compile(r"RESOURCE_EXHAUSTED|CompileTimeHbmOom")


def is_out_of_memory(e: BaseException) -> bool:
    """True when ``e`` is XLA refusing a step for lack of device memory."""
    return bool(_OOM.search(str(e)))


def measure_point(experiment: str, point: GridPoint, mode: str,
                  cluster: Cluster | None = None) -> Record:
    """One grid point measured in ``mode``; failures become an error row, never an exception.

    With a ``cluster``, run mode's workers join their own distributed system (next ports).
    """
    config_dict = _convert.to_dict(point.config)
    base = dict(experiment=experiment, index=point.index, name=point.name, mode=mode,
                config=config_dict)
    try:
        if mode == "run":
            env = cluster.for_point(point.index).to_env() if cluster else {}
            sections = run_in_subprocess(point.config, env)
        else:
            _, sections = measure_compile(build_program(point.config))
    except Unsupported as e:  # valid, but not on this backend: the row says so
        return Record(**base, status="unsupported", error=str(e))
    except Exception as e:  # the compiler or allocator refused: a result, not a crash
        if not is_out_of_memory(e):
            return Record(**base, status="error", error=one_line_error(e))
        return Record(**base, status="oom", error=one_line_error(e),
                      compiled={"fits": False})
    return Record(**base, status="ok", **sections)


def gather_compiled(record: Record) -> None:
    """Adds every process's compiled total to ``record`` (all processes must call this for
    the same configuration, whatever its status)."""
    totals = distributed.gather({"total": record.get("compiled.total_bytes")})["total"]
    if record.ok:
        record.compiled["total_bytes_per_process"] = totals
        if len({t for t in totals}) > 1:
            record.notes.append("processes compiled different totals: "
                                + ", ".join(fmt_bytes(t) for t in totals))


def run_in_subprocess(config: Config, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``python -m jaxmem.worker`` on ``config``; returns its record sections."""
    with tempfile.TemporaryDirectory(prefix="jaxmem-") as tmp:
        spec, result = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
        with open(spec, "w", encoding="utf-8") as f:
            json.dump(_convert.to_dict(config), f)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "jaxmem.worker", spec, result],
                capture_output=True, text=True, timeout=config.measure.timeout_s,
                env={**os.environ, **config.measure.allocator_env(), **(env or {})},
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"worker timed out after {config.measure.timeout_s:g} s") from None
        if not os.path.exists(result):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"worker exited with {proc.returncode}: " + " | ".join(tail))
        with open(result, encoding="utf-8") as f:
            payload = json.load(f)
    if payload.get("error"):
        raise (Unsupported if payload.get("unsupported") else RuntimeError)(payload["error"])
    return payload["sections"]


def one_line_error(e: BaseException) -> str:
    """``Type: message`` on one line (first three lines joined), for result rows."""
    msg = f"{type(e).__name__}: {e}".strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return " | ".join(lines[:3])[:2000] if lines else type(e).__name__


def describe_failure(e: BaseException) -> str:
    """A traceback string for worker logs."""
    return "".join(traceback.format_exception(e))
