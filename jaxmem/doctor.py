"""The out-of-memory doctor: for a row that does not fit, the cheapest change that does.

Every row of ``jaxmem run`` whose step the compiler or the allocator refused for memory
(``status: oom``), or whose compiled figure exceeds the target's memory (``compiled.fits``
false), gets a ``doctor`` section and a line under the table::

    row 3: needs 20.1 GiB, has 15.8 GiB; fits with: --set remat.policy=full ... (verified by
    compile: 11.2 GiB)

The change is the planner's choice (``jaxmem.plan``) over the default search space with the
row's own configuration as the starting point, ranked by estimated cost per example. It is
verified by compile while the sweep's doctor time lasts (:data:`VERIFY_SECONDS` for all rows
together); past that, or where compiling in this process could start an accelerator, the line
says it is the estimate's and how to verify it.

Example:
  >>> from jaxmem.doctor import doctor_line
  >>> doctor_line({"needs_bytes": 2**31, "has_bytes": 2**30, "sets": ["remat.policy=full"],
  ...              "verified": False, "why": "not verified"})
  'needs 2.0 GiB, has 1.0 GiB; fits with: --set remat.policy=full (not verified)'
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from jaxmem.config import Config
from jaxmem.estimate import estimate
from jaxmem.fit import Probe, compiled_bytes
from jaxmem.plan import plan
from jaxmem.record import Record
from jaxmem.search_space import SearchSpace
from jaxmem.units import fmt_bytes

#: compile time the doctor may spend verifying its suggestions, per sweep
VERIFY_SECONDS = 300.0
#: compiles per row: the planner's best candidate and, if the compiler refuses it, the next
#: ones its figure says may fit
VERIFY_COMPILES = 3


def needs(record: Record) -> int | None:
    """What the row's step needs per device: the compiler's own figure (a fitting compile's,
    or the bytes an out-of-memory refusal names), else the estimate."""
    for field in ("compiled.oom_required_bytes", "runtime.oom_required_bytes"):
        if isinstance(record.get(field), int):
            return record.get(field)
    basis = record.get("compiled.fits_basis")
    if basis and isinstance(record.get(f"compiled.{basis}"), int):
        return record.get(f"compiled.{basis}")
    return record.get("estimate.total_bytes")


def does_not_fit(record: Record) -> bool:
    return record.status == "oom" or record.get("compiled.fits") is False


class Doctor:
    """Diagnoses the rows of one sweep, sharing its verification time among them."""

    def __init__(self, verify_seconds: float = VERIFY_SECONDS, *,
                 measure: Callable[[Config], Probe] = compiled_bytes):
        self.left = verify_seconds
        self.measure = measure

    def __call__(self, record: Record, config: Config, has_bytes: int | None, *,
                 may_compile: bool) -> dict[str, Any]:
        """The ``doctor`` section of a row that does not fit (empty for a row that fits, or
        where the target's memory is unknown)."""
        if not does_not_fit(record) or not has_bytes or config.task != "train":
            return {}
        verify = may_compile and self.left > 0
        start = time.perf_counter()
        need, est = needs(record), record.get("estimate.total_bytes")
        if est is None:
            with contextlib.suppress(Exception):
                est = estimate(config).total_bytes
        # the row's own figure against its estimate: how far the estimate is off around here
        scale = need / est if need and est and need > est else 1.0
        try:
            p = plan(config, has_bytes, space=SearchSpace(verify=VERIFY_COMPILES if verify
                                                          else 0),
                     scale=scale, measure=self.measure)
        except Exception as e:  # noqa: BLE001 - no diagnosis is not a failed row
            return {"needs_bytes": needs(record), "has_bytes": has_bytes,
                    "why": f"no suggestion: {type(e).__name__}: {str(e)[:200]}"}
        finally:
            self.left -= time.perf_counter() - start if verify else 0
        out: dict[str, Any] = {"needs_bytes": needs(record), "has_bytes": has_bytes}
        c = p.chosen
        if c is None:
            out["why"] = ("nothing in the search space fits by the estimate" if not any(
                x.fits_estimate for x in p.ranked) else f"the compiler refused the planner's "
                f"{p.compiles} best candidates")
            return out
        out.update(sets=list(c.changes), estimate_bytes=c.estimate_bytes,
                   compiled_bytes=c.compiled_bytes, verified=c.fits is True,
                   compiles=p.compiles)
        if c.fits:
            out["why"] = f"verified by compile: {fmt_bytes(c.compiled_bytes or 0)}"
        elif not may_compile:
            out["why"] = ("the estimate's choice, not verified here (compiling in this "
                          "process could start an accelerator); check it with jaxmem run")
        else:
            out["why"] = ("the estimate's choice, not verified: the sweep's doctor time "
                          f"({VERIFY_SECONDS:.0f} s of compiles) was spent; check it with "
                          "jaxmem plan")
        return out


def doctor_line(section: dict[str, Any]) -> str:
    """One line for the table's caption."""
    need, has = section.get("needs_bytes"), section.get("has_bytes")
    head = (f"needs {fmt_bytes(need) if need else 'more'}, has "
            f"{fmt_bytes(has) if has else '?'}")
    if not section.get("sets"):
        return f"{head}; {section.get('why', 'no suggestion')}"
    sets = " ".join(f"--set {s}" for s in section["sets"])
    return f"{head}; fits with: {sets} ({section.get('why', '')})"


def diagnose_all(records: list[Record], configs: list[Config], has: list[int | None],
                 may_compile: list[bool], doctor: Doctor | None = None) -> list[Record]:
    """The records, each that does not fit with its ``doctor`` section."""
    doctor = doctor or Doctor()
    return [dataclasses.replace(r, doctor=doctor(r, c, h, may_compile=m))
            if does_not_fit(r) else r
            for r, c, h, m in zip(records, configs, has, may_compile, strict=True)]
