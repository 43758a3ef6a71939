"""Run mode's profiles (``measure.profile``): an XProf trace and a pprof device memory profile.

* ``trace``: ``measure.profile_steps`` more steps, after the timed ones, under
  ``jax.profiler.trace``: a folder that ``xprof --logdir DIR`` (or TensorBoard with the
  profile plugin) opens, with the steps' device and host timelines, XLA's ops and, on
  GPU/TPU, the memory viewer.
* ``memory``: ``jax.profiler.save_device_memory_profile`` after a step, before its result is
  dropped: the arrays live between steps (the new training state, which took the donated old
  one's place, the batch and the loss), each with the Python stack that made it. ``go tool pprof
  -http=: FILE`` (or ``pprof``) opens it. XLA's temporaries inside the step are not arrays, so
  they are not in it: ``runtime.device_peak_bytes`` minus this profile's total is what the step
  itself adds.

Example:
  >>> import jax, jax.numpy as jnp, tempfile
  >>> from jaxmem.profiling import profile
  >>> step = jax.jit(lambda x: x * 2)
  >>> def run(args):
  ...     out = step(*args)
  ...     return (out,), out.block_until_ready()
  >>> _, paths = profile(run, (jnp.ones(4),), "memory", 1, tempfile.mkdtemp())
  >>> sorted(paths), paths["profile_memory_path"].endswith(".prof")
  (['profile_memory_path'], True)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

#: what each ``measure.profile`` value takes
TAKES = {"trace": ("trace",), "memory": ("memory",), "both": ("trace", "memory")}


def profile(step: Callable[[tuple], tuple[tuple, Any]], args: tuple, what: str, steps: int,
            folder: str | os.PathLike) -> tuple[tuple, dict[str, str]]:
    """Runs ``step`` (``args -> (next args, result)``, blocking) ``steps`` more times under the
    profilers ``what`` asks for, writing into ``folder`` (one subfolder per process when there
    are several); returns the next args and the record fields naming what was written."""
    out = Path(folder)
    if jax.process_count() > 1:
        out = out / f"process{jax.process_index()}"
    out.mkdir(parents=True, exist_ok=True)
    takes = TAKES[what]
    paths: dict[str, str] = {}
    if "trace" in takes:
        trace_dir = out / "trace"
        with jax.profiler.trace(str(trace_dir)):
            for k in range(steps):
                with jax.profiler.StepTraceAnnotation("train_step", step_num=k):
                    args, _ = step(args)
        paths["profile_trace_dir"] = str(trace_dir)
    if "memory" in takes:
        args, result = step(args)
        memory_path = out / "device_memory.prof"
        jax.profiler.save_device_memory_profile(str(memory_path))
        del result
        paths["profile_memory_path"] = str(memory_path)
    return args, paths
