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

import contextlib
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jaxmem import _convert, cache, distributed, results, targets
from jaxmem.config import MODES
from jaxmem.distributed import Cluster
from jaxmem.doctor import Doctor, does_not_fit
from jaxmem.errors import ConfigError, check_choice
from jaxmem.experiment import Experiment, GridPoint
from jaxmem.measure import make_record, measure_point
from jaxmem.pool import CompilePool
from jaxmem.record import Record, record_key
from jaxmem.setup import Setup, resolve


def run(
    experiment: Experiment,
    mode: str | None = None,
    *,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    cluster: Cluster | None = None,
    workers: int = 0,
    resume: bool = False,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> list[Record]:
    """Measures every grid point of ``experiment``; returns one Record per point, in grid
    order.

    Every point is resolved (:func:`jaxmem.setup.resolve`) and checked, and ``out`` too, before
    the first is measured, so bad input stops the sweep before anything compiles or is
    written. Each row is appended to ``out`` as soon as it is measured (``jaxmem.results``).

    Args:
      experiment: what to measure.
      mode: ``compile`` or ``run``; None uses each point's ``measure.mode``.
      out: folder for ``results.jsonl`` and ``results.csv``.
      progress: show a progress bar on stderr.
      cluster: this process is one of several (``jaxmem.distributed``), already initialised
        for compile mode; only process 0 writes ``out``. Compiles in this process.
      workers: compile mode: measure in this many worker processes (``jaxmem.pool``: a
        timeout and a crash are rows, not the end of the sweep); 0 compiles in this process.
      resume: keep ``out``'s rows and measure only the configurations without one (same
        configuration, mode and library versions: the record ``key``).
      force: replace ``out``'s rows.
      cache_dir: turn on JAX's persistent compilation cache there, where it applies
        (``jaxmem.cache``).

    Raises:
      ConfigError: bad input (nothing was measured or written).
    """
    if mode is not None:
        check_choice("--mode", mode, MODES, what="mode")
    if cluster is not None and (workers or resume):
        raise ConfigError("--workers" if workers else "--resume", "does not apply across "
                          "several processes (each compiles in lockstep with the others)")
    if out is not None:
        results.check_out(out)
    points = experiment.grid()
    setups = prepare(points, mode, in_parent=not workers)
    modes = [mode or p.config.measure.mode for p in points]
    keys = [record_key(_convert.to_dict(p.config), m) for p, m in zip(points, modes, strict=True)]
    use_cache = cache_dir is not None and cache.applies(s.target.family for s in setups)
    writes = out is not None and distributed.is_process_zero(cluster)
    with contextlib.ExitStack() as stack:
        writer = (stack.enter_context(results.Writer(out, resume=resume, force=force))
                  if writes else None)
        finished: dict[int, Record] = {}
        if writer is not None:
            for point, key in zip(points, keys, strict=True):
                if (old := writer.done(key)) is not None:  # resumed: this grid's index and name
                    finished[point.index] = dataclasses.replace(old, index=point.index,
                                                                name=point.name,
                                                                experiment=experiment.name)
        bar = stack.enter_context(_progress(progress, len(points)))
        task = bar.add_task("", total=len(points), completed=len(finished))
        doctor = Doctor()
        position = {p.index: i for i, p in enumerate(points)}

        def keep(record: Record) -> None:
            if does_not_fit(record) and distributed.is_process_zero(cluster):
                i = position[record.index]
                record = dataclasses.replace(record, doctor=_diagnose(
                    doctor, record, setups[i], modes[i]))
            finished[record.index] = record
            if writer is not None:
                writer.append(record)
            bar.advance(task)

        todo = [i for i, p in enumerate(points) if p.index not in finished]
        pooled = [i for i in todo if modes[i] == "compile"] if workers else []
        if pooled:
            pool = stack.enter_context(CompilePool(
                workers, cpu_devices=max(s.target.cpu_devices for s in setups),
                cache_dir=os.fspath(cache_dir) if use_cache else None))
            bar.update(task, description=f"compiling in {min(workers, len(pooled))} workers")
            tasks = [(i, _convert.to_dict(points[i].config), "compile",
                      points[i].config.measure.timeout_s) for i in pooled]
            for i, status, error, sections in pool.map(tasks):
                keep(make_record(experiment.name, points[i], "compile", status, error,
                                 sections))
        elif use_cache:
            cache.enable(cache_dir)
        for i in [i for i in todo if i not in set(pooled)]:
            bar.update(task, description=f"{points[i].name} ({modes[i]})")
            record = measure_point(experiment.name, points[i], setups[i], modes[i], cluster,
                                   artifacts_dir(out, points[i]) if modes[i] == "run" else None)
            if modes[i] == "compile" and jax.distributed.is_initialized():
                distributed.gather_compiled(record)
            keep(record)
        if writer is not None:
            writer.finish(keys)
    return [finished[p.index] for p in points]


def artifacts_dir(out: str | os.PathLike | None, point: GridPoint) -> Path | None:
    """Where a run-mode point leaves its profiles and checkpoints: ``<out>/artifacts/<index>-
    <name>`` (the name made safe for a path, absolute); None without ``out`` (the worker makes
    a temporary folder only if the point asks for a profile or a checkpoint).

    Example:
      >>> from jaxmem.experiment import GridPoint
      >>> artifacts_dir("runs/x", GridPoint(3, "remat=full,mesh[data=2]", None)).parts[-3:]
      ('x', 'artifacts', '003-remat=full_mesh_data=2_')
    """
    if out is None:
        return None
    name = f"{point.index:03d}-{_UNSAFE.sub('_', point.name)[:80]}"
    return Path(out).absolute() / "artifacts" / name


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def _diagnose(doctor: Doctor, record: Record, setup: Setup, mode: str) -> dict:
    """The row's ``doctor`` section; compiles to verify only where compiling here starts no
    accelerator (compile mode on CPU and compile-only targets)."""
    here = targets.starts_no_accelerator(setup.target)
    has = record.env.get("device_memory_bytes")
    if has is None and here:
        has = setup.memory.bytes
    return doctor(record, setup.config, has, may_compile=here and mode == "compile")


def prepare(points: Sequence[GridPoint], mode: str | None = None, *,
            in_parent: bool = True) -> list[Setup]:
    """Each point resolved once and checked (:meth:`jaxmem.setup.Setup.check`); the CPU
    devices that ``cpu:N`` targets need are asked for first, before JAX starts.

    Args:
      in_parent: compile mode measures in this process, so its devices may be asked for
        and a custom model's code run here; otherwise only targets that start no accelerator
        are asked (``targets.starts_no_accelerator``), custom models are only prechecked, and
        the workers check the rest (a misfit is that row).

    Raises:
      ConfigError: the first point that is bad input.
    """
    setups = [resolve(p.config) for p in points]
    targets.ensure_cpu_devices(s.target for s in setups)
    for point, setup in zip(points, setups, strict=True):
        point_mode = mode or point.config.measure.mode
        devices = point_mode == "compile" and (in_parent
                                               or targets.starts_no_accelerator(setup.target))
        # a custom model's code runs in this process only where it would be measured anyway
        setup.check(point_mode, devices=devices,
                    user_code=point_mode == "compile" and in_parent)
    return setups


def _progress(enabled: bool, total: int) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled or total == 0,
        transient=True,
    )
