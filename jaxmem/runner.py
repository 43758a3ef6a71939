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
from jaxmem.errors import check_choice
from jaxmem.experiment import Experiment, GridPoint
from jaxmem.measure import measure_point
from jaxmem.record import Record
from jaxmem.setup import Setup, resolve


def run(
    experiment: Experiment,
    mode: str | None = None,
    *,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    cluster: Cluster | None = None,
) -> list[Record]:
    """Measures every grid point of ``experiment``; returns one Record per point.

    Every point is resolved (:func:`jaxmem.setup.resolve`) and checked before the first is
    measured, so bad input stops the sweep before anything compiles.

    Args:
      experiment: what to measure.
      mode: ``compile`` or ``run``; None uses each point's ``measure.mode``.
      out: folder for ``results.jsonl`` and ``results.csv`` (written once, at the end).
      progress: show a progress bar on stderr.
      cluster: this process is one of several (``jaxmem.distributed``), already initialised
        for compile mode; only process 0 writes ``out``.

    Raises:
      ConfigError: a point is bad input (nothing was measured or written).
    """
    if mode is not None:
        check_choice("--mode", mode, MODES, what="mode")
    points = experiment.grid()
    setups = prepare(points, mode)
    records: list[Record] = []
    with _progress(progress, len(points)) as bar:
        task = bar.add_task("", total=len(points))
        for point, setup in zip(points, setups, strict=True):
            point_mode = mode or point.config.measure.mode
            bar.update(task, description=f"{point.name} ({point_mode})")
            record = measure_point(experiment.name, point, setup, point_mode, cluster)
            if point_mode == "compile" and jax.distributed.is_initialized():
                distributed.gather_compiled(record)
            records.append(record)
            bar.advance(task)
    if out is not None and distributed.is_process_zero(cluster):
        results.write(out, records)
    return records


def prepare(points: Sequence[GridPoint], mode: str | None = None) -> list[Setup]:
    """Each point resolved once and checked (:meth:`jaxmem.setup.Setup.check`); the CPU
    devices that ``cpu:N`` targets need are asked for first, before JAX starts.

    Raises:
      ConfigError: the first point that is bad input.
    """
    setups = [resolve(p.config) for p in points]
    targets.ensure_cpu_devices(s.target for s in setups)
    for point, setup in zip(points, setups, strict=True):
        setup.check(mode or point.config.measure.mode)
    return setups


def _progress(enabled: bool, total: int) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled or total == 0,
        transient=True,
    )
