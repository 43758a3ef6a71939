"""Measures one configuration: compile mode in this process, run mode in a fresh one.

``compile``: the step is traced and compiled on abstract shapes (nothing allocated), XLA's memory
and cost analysis are read, and the step is held against the target's usable memory. ``run``:
a worker process (``jaxmem.isolate``) allocates real arrays, times steps and reads device
``memory_stats()``; a fresh process is the only way to get a peak that belongs to this
configuration alone. Any failure becomes the row's status, never an exception.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from jaxmem import _convert, analytic, collectives, isolate
from jaxmem.build import build_program
from jaxmem.cache import cache_events
from jaxmem.compiled import MemoryReport, compile_timed
from jaxmem.estimate import estimate
from jaxmem.failures import classify
from jaxmem.notes import notes
from jaxmem.record import Record, environment, finite, record_key
from jaxmem.targets import Memory

if TYPE_CHECKING:
    from jaxmem.distributed import Cluster
    from jaxmem.experiment import GridPoint
    from jaxmem.program import Program
    from jaxmem.setup import Setup


@dataclasses.dataclass(frozen=True)
class FitsBasis:
    """Which compiled figure ``fits`` holds against a device's usable memory, and why."""

    field: str
    why: str


#: The figure that decides ``fits``, per platform compiled for.
FITS_BASIS: dict[str, FitsBasis] = {
    "tpu": FitsBasis("peak_bytes", "libtpu's own peak of the step, the figure it checks "
                     "against HBM when it compiles (argument + output + temp - alias is not: "
                     "it holds every argument and output live for the whole step, and leaves "
                     "out libtpu's own overheads)"),
    "gpu": FitsBasis("total_bytes", "XLA:GPU allocates the arguments, outputs and one block "
                     "of temporaries, so their sum (argument + output + temp - alias) must fit"),
    "cpu": FitsBasis("total_bytes", "XLA:CPU's peak leaves out loop bodies' working set; "
                     "argument + output + temp - alias bounds it"),
}
_DEFAULT_BASIS = FitsBasis("total_bytes", "argument + output + temp - alias, the usual bound")


def fits_figure(report: MemoryReport) -> tuple[FitsBasis, int]:
    """The compiled figure ``fits`` holds against memory on ``report``'s platform, and its
    basis (the default where the backend reports no peak)."""
    basis = FITS_BASIS.get(report.platform, _DEFAULT_BASIS)
    used = getattr(report, basis.field)
    if used is None:  # the backend reports no peak
        basis, used = _DEFAULT_BASIS, report.total_bytes
    return basis, int(used)


def fits(report: MemoryReport, memory: Memory) -> dict[str, Any]:
    """``fits``, ``headroom_bytes`` and the basis of both, where the memory is known."""
    if memory.bytes is None:
        return {}
    basis, used = fits_figure(report)
    return {"fits": used <= memory.bytes, "headroom_bytes": memory.bytes - used,
            "fits_basis": basis.field}


def fits_explanation(platform: str) -> str:
    """One line on what ``fits`` compares on ``platform``, and why."""
    basis = FITS_BASIS.get(platform, _DEFAULT_BASIS)
    return f"compiled.{basis.field}: {basis.why}"


def measure_compile(program: Program) -> tuple[Any, dict[str, Any]]:
    """Compiles the program's step on abstract arguments: ``(compiled, record sections)``."""
    compiled, lower_s, compile_s = compile_timed(program.step, *program.abstract_args)
    report = MemoryReport.from_compiled(compiled, lower_seconds=lower_s,
                                        compile_seconds=compile_s)
    memory = program.setup.memory
    numbers = analytic.numbers(program)
    figures = report.to_dict()
    figures.update(collectives.summary(collectives.of_compiled(compiled)))
    figures.update(fits(report, memory))
    sections = {
        "estimate": _estimate_section(program.setup, report),
        "env": {**environment(list(program.mesh.devices.flat)),
                "device_memory_bytes": memory.bytes, "device_memory_source": memory.source},
        "analytic": numbers,
        "compiled": figures,
        "notes": notes(program, report, numbers),
    }
    return compiled, sections


def _estimate_section(setup: Setup, report: MemoryReport) -> dict[str, Any]:
    """The row's ``estimate`` section, its error against the figure ``fits`` uses; empty
    where the estimate does not apply (forward-only tasks, models without shape formulas)."""
    try:
        return estimate(setup).record(fits_figure(report)[1])
    except Exception:  # noqa: BLE001 - no estimate (forward-only task, a model's own code
        return {}  # failing to trace): the compiled row stands on its own


def measure_setup(setup: Setup, mode: str, env: dict[str, str] | None = None,
                  artifacts: str | os.PathLike | None = None
                  ) -> tuple[str, str | None, dict[str, Any]]:
    """``(status, error, record sections)`` of one configuration: compiled in this process,
    or run in a worker process (``jaxmem.isolate``; ``artifacts``: the folder for its profiles
    and checkpoints). Never raises for a failure of the configuration itself: it becomes the
    status."""
    try:
        if mode == "run":
            sections = isolate.run_in_subprocess(setup.config, env, artifacts)
        else:
            with cache_events() as hits:
                _, sections = measure_compile(build_program(setup))
            sections["compiled"]["cache_hit"] = bool(hits)
    except Exception as e:  # the compiler, the allocator or the model refused: a result
        failure = classify(e)
        where = "runtime" if mode == "run" else "compiled"
        extra = {where: failure.details} if failure.details else {}
        if failure.status == "oom":
            extra.setdefault("compiled", {})["fits"] = False
        return failure.status, failure.error, extra
    sections, notes = finite(sections)
    sections["notes"] = [*sections.get("notes", []), *notes]
    return "ok", None, sections


def make_record(experiment: str, point: GridPoint, mode: str, status: str, error: str | None,
                sections: dict[str, Any]) -> Record:
    """The row of one grid point."""
    config = _convert.to_dict(point.config)
    return Record(experiment=experiment, index=point.index, name=point.name, mode=mode,
                  status=status, error=error, config=config, key=record_key(config, mode),
                  **sections)


def measure_point(experiment: str, point: GridPoint, setup: Setup, mode: str,
                  cluster: Cluster | None = None,
                  artifacts: str | os.PathLike | None = None) -> Record:
    """One grid point measured in ``mode``, in this process (compile) or a worker (run).

    With a ``cluster``, run mode's workers join their own distributed system (next ports).
    ``artifacts``: the folder for this point's profiles and checkpoints (run mode).
    """
    env = cluster.for_point(point.index).to_env() if (cluster and mode == "run") else None
    return make_record(experiment, point, mode, *measure_setup(setup, mode, env, artifacts))
