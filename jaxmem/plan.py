"""The cheapest configuration that fits, verified by compile: :func:`plan`.

``jaxmem plan EXPERIMENT --budget 16GiB`` combines the choices of the experiment's search space
(``jaxmem.search_space``: remat policy x precision x sharding preset and mesh x microbatches x
optimizer state dtype x offload), estimates each candidate's memory (``jaxmem.estimate``,
milliseconds each) and cost (``jaxmem.cost``: FLOPs with recomputation, collectives, host
transfers), ranks those the estimate says fit by the objective, and compiles the best to verify
it; if the compiler says it does not fit, the next, up to ``verify`` compiles.

* ``throughput`` (default): least estimated seconds per example;
* ``memory``: least estimated bytes per device.

Candidates within 2% of the best (:data:`TIE`) count as tied, and the one that changes fewer
of the experiment's settings ranks first.

With ``vary`` (e.g. ``data.batch_size``), each candidate is taken at the largest value of that
field the estimate says fits, the ranking uses that value, and the chosen candidate's value is
found by compile (``jaxmem.fit``), as is the naive baseline's (float32, no remat, data
parallel, no accumulation), so the table compares verified batches.

Example:
  >>> from jaxmem.config import Config
  >>> from jaxmem.plan import plan
  >>> from jaxmem.search_space import SearchSpace
  >>> p = plan(Config(), budget_bytes=2**30, space=SearchSpace(verify=0))
  >>> p.chosen is not None and p.chosen.fits_estimate
  True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from jaxmem import _convert
from jaxmem.config import Config
from jaxmem.cost import Cost, step_cost
from jaxmem.errors import ConfigError, Unsupported
from jaxmem.estimate import estimate
from jaxmem.fit import FitResult, Probe, Space, compiled_bytes, estimate_boundary, fit
from jaxmem.search_space import SearchSpace, set_line
from jaxmem.setup import resolve
from jaxmem.units import fmt_bytes

OBJECTIVES: dict[str, Callable[[Candidate], float]] = {
    "throughput": lambda c: c.cost.per_sample,
    "memory": lambda c: c.estimate_bytes,
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration the planner considered.

    Attributes:
      pairs: the ``(config path, value)`` choices that make it.
      changes: the ``--set`` strings that differ from the experiment's configuration.
      config: the configuration.
      estimate_bytes: its estimated bytes per device.
      cost: its estimated cost.
      fits_estimate: the estimate is within the budget.
      compiled_bytes: the compiled figure ``fits`` uses (None: not compiled).
      fits: the compiler's verdict (None: not compiled).
      value: the varied field's value (``vary``), else None.
    """

    pairs: tuple[tuple[str, Any], ...]
    changes: tuple[str, ...]
    config: Config
    estimate_bytes: int
    cost: Cost
    fits_estimate: bool
    compiled_bytes: int | None = None
    fits: bool | None = None
    value: int | None = None

    @property
    def sets(self) -> tuple[str, ...]:
        """Every ``--set`` string of the candidate."""
        return set_line(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"sets": list(self.sets), "changes": list(self.changes),
                "estimate_bytes": self.estimate_bytes, "compiled_bytes": self.compiled_bytes,
                "fits": self.fits if self.fits is not None else self.fits_estimate,
                "verified": self.fits is not None, "value": self.value,
                "cost": self.cost.per_sample, "cost_detail": self.cost.to_dict()}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The answer of :func:`plan`.

    Attributes:
      budget_bytes: the memory per device candidates must fit.
      objective: what the ranking minimises.
      searched: candidates estimated.
      skipped: candidates the configuration or mesh refused, by reason.
      ranked: estimated candidates, those that fit first, best first.
      chosen: the best candidate the verification left (None: nothing fits).
      baseline: the naive configuration (float32, no remat, data parallel, no accumulation).
      compiles: compiles used to verify.
      seconds: wall time of the search and verification.
      vary: the varied field (None: the configuration's own values).
      fits: the compile-verified fit of the chosen and the baseline (``vary``).
    """

    budget_bytes: int
    objective: str
    searched: int
    skipped: dict[str, int]
    ranked: tuple[Candidate, ...]
    chosen: Candidate | None
    baseline: Candidate | None
    compiles: int
    seconds: float
    vary: str | None = None
    fits: dict[str, FitResult] = dataclasses.field(default_factory=dict)

    def relative(self, c: Candidate) -> tuple[float | None, float | None]:
        """``(FLOPs per sample, cost per sample)`` of ``c`` relative to the baseline."""
        if self.baseline is None:
            return None, None
        b = self.baseline.cost
        return c.cost.flops_per_sample / b.flops_per_sample, c.cost.per_sample / b.per_sample


def _naive(devices: int) -> tuple[tuple[str, Any], ...]:
    return (("remat.policy", "none"), ("precision.policy", "fp32"), ("sharding.preset", "dp"),
            ("mesh.data", devices), ("mesh.fsdp", 1), ("mesh.tensor", 1),
            ("data.microbatches", 1), ("optimizer.state_dtype", "auto"),
            ("optimizer.offload", False))


class _Maker:
    """Builds and estimates candidates of one base configuration."""

    def __init__(self, config: Config, budget: int, vary: str | None):
        self.raw = _convert.to_dict(config)
        self.budget = budget
        self.vary = vary
        base = self.raw
        self.current = {p: _convert.get_path(base, p) for p, _ in _naive(1)}

    def make(self, pairs: tuple[tuple[str, Any], ...]) -> Candidate:
        raw = self.raw
        for path, value in pairs:
            raw = _convert.set_path(Config, raw, path, value)
        config = self._admissible(raw) if self.vary else _convert.from_dict(Config, raw)
        value = None
        if self.vary is not None:
            space = Space(config, self.vary)
            value = estimate_boundary(space, self.budget)
            if value is None:
                raise Unsupported("no estimate for this configuration")
            config = space.config(value)
        est = estimate(config)
        changes = set_line(tuple((p, v) for p, v in pairs if self.current.get(p) != v))
        return Candidate(pairs, changes, config, est.total_bytes, step_cost(config, est),
                         est.total_bytes <= self.budget, value=value)

    def _admissible(self, raw: dict[str, Any]) -> Config:
        """The configuration with the varied field at its first value from the experiment's
        up that the candidate accepts (a mesh may need a multiple of its devices)."""
        start = _convert.get_path(raw, self.vary)
        for value in range(start, 64 * start + 1):
            try:
                return _convert.from_dict(Config, _convert.set_path(Config, raw, self.vary,
                                                                    value))
            except ConfigError:
                continue
        return _convert.from_dict(Config, raw)  # the ConfigError of the value as written


def plan(config: Config, budget_bytes: int | None = None, *, space: SearchSpace | None = None,
         objective: str = "throughput", vary: str | None = None, scale: float = 1.0,
         measure: Callable[[Config], Probe] = compiled_bytes) -> Plan:
    """The best configuration of ``space`` around ``config`` that fits ``budget_bytes``.

    Args:
      config: the experiment's configuration (model, batch, optimizer, target).
      budget_bytes: memory per device (default: the target's usable memory).
      space: the choices to combine (default: :class:`SearchSpace`).
      objective: ``throughput`` or ``memory``.
      vary: an integer field to maximise per candidate (``data.batch_size``).
      scale: the estimate's known error factor here (compiled / estimated bytes of a
        nearby configuration): a candidate is verified only if its estimate times this fits;
        a compile that does not fit raises it to that compile's own factor.
      measure: how a candidate is checked (compiles by default; tests pass their own).

    Raises:
      ConfigError: a bad objective or field, or no budget known.
    """
    start = time.perf_counter()
    space = space or SearchSpace()
    if objective not in OBJECTIVES:
        raise ConfigError("--objective", "unknown objective", value=objective,
                          choices=sorted(OBJECTIVES))
    if vary is not None:
        Space(config, vary)  # ConfigError for a field that cannot be varied
    setup = resolve(config)
    if budget_bytes is None:
        budget_bytes = setup.memory.bytes
        if budget_bytes is None:
            raise ConfigError("--budget", "the target does not report its memory; give a "
                              "budget (e.g. --budget 16GiB)", value=None)
    devices = setup.target.device_count()
    maker = _Maker(config, budget_bytes, vary)
    candidates, skipped = [], {}
    for pairs in space.choices(devices, host_memory=setup.target.platform() in ("tpu", "gpu")):
        try:
            candidates.append(maker.make(pairs))
        except (ConfigError, Unsupported) as e:
            reason = str(e).split(",")[0][:80]
            skipped[reason] = skipped.get(reason, 0) + 1
    ranked = _rank(candidates, OBJECTIVES[objective], vary)
    try:
        baseline = maker.make(_naive(devices))
    except (ConfigError, Unsupported):
        baseline = None
    fits: dict[str, FitResult] = {}
    if vary is None:
        chosen, compiles = _verify_best(ranked, space.verify, budget_bytes, scale, measure)
    else:
        chosen = _fit_best(ranked, space.verify, vary, budget_bytes, measure, fits)
        if chosen is not None and chosen.fits and baseline is not None:
            baseline = _fit(baseline, vary, budget_bytes, measure, fits, "baseline")
        compiles = sum(r.compiles for r in fits.values())
    return Plan(budget_bytes, objective, len(candidates), skipped, tuple(ranked), chosen,
                baseline, compiles, time.perf_counter() - start, vary, fits)


def _rank(candidates: list[Candidate], key: Callable[[Candidate], float], vary: str | None
          ) -> list[Candidate]:
    """Those the estimate says fit first, by the objective (with ``vary``: ties to the larger
    value); the rest by estimated bytes."""
    def order(c: Candidate) -> tuple[Any, ...]:
        if not c.fits_estimate:
            return (True, c.estimate_bytes, 0)
        return (False, key(c), -(c.value or 0))

    ranked = sorted(candidates, key=order)
    return ranked if vary is not None else _fewest_changes_first(ranked, key)


def _verify_best(ranked: list[Candidate], verify: int, budget: int, scale: float,
                 measure: Callable[[Config], Probe]) -> tuple[Candidate | None, int]:
    """Compiles the best candidates in order until one fits (at most ``verify``), replacing
    each compiled one in ``ranked``; ``(chosen, compiles)``. With ``verify`` 0 the estimate's
    choice stands, unverified."""
    compiles = 0
    for i, c in enumerate(ranked):
        if not c.fits_estimate:
            break
        if c.estimate_bytes * scale > budget:
            continue  # the estimate, corrected by what compiles said, does not fit
        if not verify:
            return c, 0
        if compiles >= verify:
            break
        probe = measure(c.config)
        compiles += 1
        fits = probe.fits and probe.bytes is not None and probe.bytes <= budget
        ranked[i] = dataclasses.replace(c, compiled_bytes=probe.bytes, fits=fits)
        if fits:
            return ranked[i], compiles
        measured = probe.bytes if probe.bytes is not None else probe.needed
        if measured:  # the estimate was low here: hold the next ones to its error
            scale = max(scale, measured / c.estimate_bytes)
    return None, compiles


def _fit_best(ranked: list[Candidate], verify: int, vary: str, budget: int,
              measure: Callable[[Config], Probe], fits: dict[str, FitResult]
              ) -> Candidate | None:
    """The best candidates in order at their largest value by compile (``jaxmem.fit``) until
    one has a value that fits (at most ``verify`` of them), each replaced in ``ranked``; with
    ``verify`` 0 the estimate's choice, unverified."""
    tried = 0
    for i, c in enumerate(ranked):
        if not c.fits_estimate:
            return None
        if not verify:
            return c
        if tried >= verify:
            return None
        tried += 1
        ranked[i] = _fit(c, vary, budget, measure, fits, "chosen")
        if ranked[i].fits:
            return ranked[i]
        fits[f"refused {tried}"] = fits.pop("chosen")
    return None


def _fit(c: Candidate, vary: str, budget: int, measure: Callable[[Config], Probe],
         fits: dict[str, FitResult], name: str) -> Candidate:
    """``c`` at the largest value of ``vary`` that fits by compile (``jaxmem.fit``), the
    result kept in ``fits[name]``."""
    result = fits[name] = fit(c.config, vary, budget, measure=measure)
    if result.value is None:
        return dataclasses.replace(c, value=None, fits=False)
    config = Space(c.config, vary).config(result.value)
    return dataclasses.replace(c, value=result.value, config=config, fits=True,
                               compiled_bytes=result.bytes_at(result.value),
                               cost=step_cost(config))


#: candidates within this fraction of the best objective count as tied: the one that changes
#: fewer settings of the experiment ranks first
TIE = 0.02


def _fewest_changes_first(ranked: list[Candidate], key: Callable[[Candidate], float]
                          ) -> list[Candidate]:
    if not ranked or not ranked[0].fits_estimate:
        return ranked
    best = key(ranked[0])
    tied = [c for c in ranked if c.fits_estimate and key(c) <= best * (1 + TIE)]
    rest = [c for c in ranked if not (c.fits_estimate and key(c) <= best * (1 + TIE))]
    return sorted(tied, key=lambda c: (len(c.changes), key(c))) + rest


def plan_rows(p: Plan, top: int = 10) -> list[dict[str, Any]]:
    """The rows of the plan's table: the best ``top`` candidates and the baseline."""
    def row(label: str, c: Candidate) -> dict[str, Any]:
        flops, cost = p.relative(c)
        return {
            "#": label,
            "changes": " ".join(c.changes) or "(as configured)",
            **({p.vary.split(".")[-1]: "-" if c.value is None else str(c.value)}
               if p.vary else {}),
            "estimate": fmt_bytes(c.estimate_bytes),
            "compiled": "-" if c.compiled_bytes is None else fmt_bytes(c.compiled_bytes),
            "fits": ("yes" if c.fits else "NO") if c.fits is not None else (
                "est." if c.fits_estimate else "no (est.)"),
            "FLOPs/sample": "-" if flops is None else f"x{flops:.2f}",
            "cost/sample": "-" if cost is None else f"x{cost:.2f}",
        }

    rows = [row(str(i), c) for i, c in enumerate(p.ranked[:top])]
    if p.baseline is not None:
        rows.append(row("base", p.baseline))
    return rows


def plan_summary(p: Plan) -> str:
    """What the search did, the verdict, and the cost model's formula, in a few lines."""
    refused = sum(p.skipped.values())
    lines = [f"{p.searched} candidates estimated ({refused} refused by the configuration or "
             f"mesh) in {p.seconds:.1f} s with {p.compiles} compiles; budget "
             f"{fmt_bytes(p.budget_bytes)} per device; ranked by {p.objective}"]
    if p.chosen is None:
        lines.append("nothing fits: " + ("no candidate's estimate is within the budget"
                     if not any(c.fits_estimate for c in p.ranked)
                     else "the compiler refused every candidate it was asked to verify"))
    elif p.chosen.fits is None:
        lines.append("row 0 is the estimate's choice, not verified by compile (verify: 0)")
    else:
        lines.append(f"row 0 verified by compile: {fmt_bytes(p.chosen.compiled_bytes or 0)}")
    for name, r in p.fits.items():
        lines.append(f"{name}: no {r.field} fits by compile ({r.compiles} compiles)"
                     if r.value is None else
                     f"{name}: {r.field} = {r.value} fits by compile, {r.next_value} does not "
                     f"({r.compiles} compiles)")
    if "chosen" in p.fits and "baseline" in p.fits and p.fits["baseline"].value:
        ratio = (p.fits["chosen"].value or 0) / p.fits["baseline"].value
        lines.append(f"{p.vary}: x{ratio:.2f} the baseline's")
    lines.append("x: relative to 'base' (float32, no remat, data parallel, no accumulation); "
                 "cost = compute + collectives + host transfers + optimizer update + weight "
                 "reads, estimated seconds per example (jaxmem.cost)")
    return "\n".join(lines)
