"""Run mode's measurement (source ``runtime``), inside the worker process: real arrays, timed
steps, device ``memory_stats()`` and the process's peak resident memory.

Example:
  >>> from jaxmem.runtime import peak_rss_bytes
  >>> peak_rss_bytes() > 0
  True
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

import chex
import jax

from jaxmem import distributed
from jaxmem.build import build_program
from jaxmem.checkpoint import save_and_restore
from jaxmem.measure import measure_compile
from jaxmem.profiling import profile
from jaxmem.setup import resolve

if TYPE_CHECKING:
    from jaxmem.setup import Setup


def device_memory(devices: list[jax.Device]) -> dict[str, Any]:
    """Peak / in-use / limit bytes over ``devices``, or why they are unavailable."""
    stats = [d.memory_stats() for d in devices]
    if any(s is None for s in stats):
        return {"device_stats": f"unavailable: the {devices[0].platform} backend reports no "
                                "memory_stats()"}
    return {
        "device_stats": "available",
        "device_peak_bytes": max(int(s.get("peak_bytes_in_use", 0)) for s in stats),
        "device_bytes_in_use": max(int(s.get("bytes_in_use", 0)) for s in stats),
        "device_bytes_limit": min(int(s.get("bytes_limit", 0)) for s in stats) or None,
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def run(setup: Setup, artifacts: str | os.PathLike | None = None) -> dict[str, Any]:
    """Measures the setup with real arrays in this process; returns the record sections (the
    compiled ones too). ``artifacts``: the folder for its profiles (``measure.profile``) and
    checkpoint (``checkpoint``); a new temporary folder when they are asked for without one."""
    config = setup.config
    program = build_program(setup)
    compiled, sections = measure_compile(program)
    # the restore's targets, abstract and cheap: built before the steps so that a layout it
    # cannot restore into fails the row before anything is timed
    target = (build_program(resolve(config.restore_config()))
              if config.checkpoint.enabled else None)
    args = program.make_args(jax.random.key(config.data.seed))
    # the arrays run are the shapes and dtypes that were compiled (and the compiled figures)
    chex.assert_trees_all_equal_shapes_and_dtypes(args, program.abstract_args)
    n = program.carried_args

    def step(args: tuple) -> tuple[tuple, jax.Array]:
        out = compiled(*args)
        result = out[-1] if isinstance(out, tuple) else out
        jax.block_until_ready(result)
        return (*out[:n], *args[n:]), result

    m = config.measure
    for _ in range(m.warmup_steps):
        args, result = step(args)
    times = []
    for _ in range(m.steps):
        t0 = time.perf_counter()
        args, result = step(args)
        times.append(time.perf_counter() - t0)
    runtime = {
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        "warmup_steps": m.warmup_steps,
        "steps": m.steps,
        "final_loss": float(result) if config.task == "train" else None,
        **device_memory([d for d in program.mesh.devices.flat
                         if d.process_index == jax.process_index()]),
        "host_peak_rss_bytes": peak_rss_bytes(),
        # the allocator settings this process ran with (experiment's or inherited)
        "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        "allocator": os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR"),
    }
    if m.profile is not None or target is not None:
        if artifacts is None:
            artifacts = tempfile.mkdtemp(prefix="jaxmem-run-")
        elif jax.process_index() == 0 and os.path.isdir(artifacts):
            shutil.rmtree(artifacts)  # an earlier run's profiles and checkpoint of this point
        distributed.sync("jaxmem-artifacts")
    if m.profile is not None:  # after the figures above, so profiling changes none of them
        args, paths = profile(step, args, m.profile, m.profile_steps, artifacts)
        runtime.update(paths)
        if "profile_trace_dir" in paths:
            runtime["profile_steps"] = m.profile_steps
    if target is not None:
        state, args, result = args[:n], None, None
        runtime.update(save_and_restore(program, target, state, artifacts))
    if jax.process_count() > 1:  # each process measured its own devices
        per = distributed.gather({"peak": runtime.get("device_peak_bytes"),
                                  "step": runtime["step_time_s"],
                                  "rss": runtime["host_peak_rss_bytes"]})
        runtime.update(device_peak_bytes_per_process=per["peak"],
                       step_time_s_per_process=per["step"],
                       host_peak_rss_bytes_per_process=per["rss"])
    return {**sections, "runtime": runtime}
