"""Runs an experiment's sweep: every grid point measured, results written, errors kept as rows.

Example:
  >>> import jaxmem
  >>> exp = jaxmem.Experiment.from_dict({
  ...     "name": "tiny", "model": {"kind": "mlp", "in_features": 8, "hidden": [16]},
  ...     "sweep": {"remat": ["none", "full"]}})
  >>> [r.status for r in jaxmem.run(exp)]
  ['ok', 'ok']
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jaxmem import distributed, results, targets
from jaxmem.config import MODES
from jaxmem.distributed import Cluster
from jaxmem.errors import ConfigError, Unsupported, check_choice
from jaxmem.experiment import Experiment, GridPoint
from jaxmem.harness import gather_compiled, measure_point
from jaxmem.program import build_workload, make_mesh
from jaxmem.record import Record


def run(
    experiment: Experiment,
    mode: str | None = None,
    *,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    cluster: Cluster | None = None,
) -> list[Record]:
    """Measures every grid point of ``experiment``; returns one Record per point.

    Args:
      experiment: what to measure.
      mode: ``compile`` or ``run``; None uses each point's ``measure.mode``.
      out: folder for ``results.jsonl`` and ``results.csv`` (written once, at the end).
      progress: show a progress bar on stderr.
      cluster: this process is one of several (``jaxmem.distributed``), already initialised
        for compile mode; only process 0 writes ``out``.
    """
    if mode is not None:
        check_choice("--mode", mode, MODES, what="mode")
    points = experiment.grid()
    check_points(points, mode)
    records: list[Record] = []
    with _progress(progress, len(points)) as bar:
        task = bar.add_task("", total=len(points))
        for point in points:
            point_mode = mode or point.config.measure.mode
            bar.update(task, description=f"{point.name} ({point_mode})")
            record = measure_point(experiment.name, point, point_mode, cluster)
            if point_mode == "compile" and jax.distributed.is_initialized():
                gather_compiled(record)
            records.append(record)
            bar.advance(task)
    if out is not None and distributed.is_process_zero(cluster):
        results.write(out, records)
    return records


def check_points(points: Sequence[GridPoint], mode: str | None = None) -> None:
    """Bad input found only by looking further than the config (a custom model's factory, the
    target's devices, the mesh size) is caught here, before anything is measured or written.

    Run-mode points skip the device checks: asking for the devices would start the accelerator
    in this process, which would then hold memory that the worker's measurement should own. The
    worker checks its own mesh, and a misfit is that point's error row.
    """
    cpus = targets.cpu_device_count([p.config.target.name for p in points])
    if cpus:
        targets.ensure_cpu_devices(cpus)
    for point in points:
        config = point.config
        try:
            build_workload(config)
        except ConfigError:
            raise
        except Exception:  # noqa: S110  (the factory itself fails: that point's row says why)
            pass
        target = targets.get(config.target.name)
        point_mode = mode or config.measure.mode
        if point_mode == "compile" and config.measure.allocator_env():
            raise ConfigError("measure", "allocator settings apply to --mode run",
                              value=sorted(config.measure.allocator_env()))
        if point_mode == "run":
            if not target.runnable:
                raise ConfigError("target.name", "is compile-only, so only --mode compile "
                                  "applies", value=config.target.name)
            continue
        try:
            make_mesh(config, target.devices())
        except Unsupported:  # valid, but not on this backend: that point's row says so
            pass


def _progress(enabled: bool, total: int) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled or total == 0,
        transient=True,
    )

