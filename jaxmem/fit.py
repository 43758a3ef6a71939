"""The largest value of an integer field that fits, verified by compile: :func:`fit`.

``jaxmem fit EXPERIMENT --vary data.batch_size --budget 14GiB`` answers "what is the largest
batch (or sequence, or any integer field) whose step fits": the estimate (``jaxmem.estimate``,
milliseconds) predicts the boundary, compiles probe around it, and the answer is checked by
compile on both sides: the value fits, the next admissible value does not. Memory need not be
monotone in the field (XLA's choices change with shapes), so the value after the first that
does not fit is compiled too (if it fits again, the search goes on above it). A smaller value
compiled on the way that does not fit makes the result say so (the fitting values are not an
interval); ``check_below=True`` also compiles the value just below the answer to check that
side (it cannot change the answer, so it is off by default).

"Fits" is the compiled figure ``fits`` uses on the target (``compiled.total_bytes``; on TPU
libtpu's ``peak_bytes``) within the budget; a compile the compiler refuses for memory
(libtpu's ``RESOURCE_EXHAUSTED``) does not fit. Admissible values are those the configuration
accepts (e.g. a batch divisible by the microbatches and the mesh's batch axes).

Example:
  >>> from jaxmem.units import parse_bytes
  >>> parse_bytes("1.5GiB")
  1610612736
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxmem import _convert
from jaxmem.build import build_program
from jaxmem.compiled import MemoryReport, compile_timed
from jaxmem.config import Config
from jaxmem.errors import ConfigError
from jaxmem.estimate import ARGUMENT_TERMS, estimate
from jaxmem.failures import classify
from jaxmem.measure import fits_figure
from jaxmem.setup import resolve

#: the largest value the search considers (a guard against unbounded configurations)
MAX_VALUE = 1 << 24


@dataclasses.dataclass(frozen=True)
class Probe:
    """One compiled value: its bytes (the figure ``fits`` uses) and whether it fits; for a
    compile refused for memory, the bytes the compiler said it needs (``needed``), if it did."""

    value: int
    bytes: int | None
    fits: bool
    status: str = "ok"
    needed: int | None = None


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The answer of :func:`fit`.

    Attributes:
      field: the varied field (canonical path).
      value: the largest admissible value that fits (None: none fits).
      next_value: the next admissible value above it (checked not to fit), or None.
      compiles: how many compiles the search used.
      budget_bytes: the memory each value was held against.
      estimate_value: where the estimate put the boundary (the first compile; the second is
        where the estimate puts it once its error at the first is divided out).
      probes: every compile, in order.
      interval: False when a value above a non-fitting one was found to fit (among the
        values compiled).
      below_checked: the admissible value just below the answer was compiled (by the search
        or by ``check_below``); when it was not, ``interval`` speaks only of larger values
        and of those the search compiled.
    """

    field: str
    value: int | None
    next_value: int | None
    compiles: int
    budget_bytes: int
    estimate_value: int | None
    probes: tuple[Probe, ...]
    interval: bool = True
    below_checked: bool = True

    def bytes_at(self, value: int | None) -> int | None:
        return next((p.bytes for p in self.probes if p.value == value), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``field``, ``value``, ``next_value``, ``compiles``, ``budget_bytes`` and
        the details."""
        return {"field": self.field, "value": self.value, "next_value": self.next_value,
                "compiles": self.compiles, "budget_bytes": self.budget_bytes,
                "estimate_value": self.estimate_value, "interval": self.interval,
                "below_checked": self.below_checked,
                "probes": [dataclasses.asdict(p) for p in self.probes]}


class Space:
    """The admissible values of one integer field of a configuration."""

    def __init__(self, config: Config, field: str):
        self.raw = _convert.to_dict(config)
        self.field = _convert.canonical_path(Config, self.raw, field)
        current = _convert.get_path(self.raw, self.field)
        if not isinstance(current, int) or isinstance(current, bool):
            raise ConfigError(self.field, "is not an integer field, so it cannot be varied",
                              value=current)
        self.start = current
        self._configs: dict[int, Config | None] = {}
        self._estimates: dict[int, Any] = {}

    def config(self, value: int) -> Config | None:
        """The configuration with the field at ``value``; None if it does not accept it."""
        if value not in self._configs:
            try:
                raw = _convert.set_path(Config, self.raw, self.field, value)
                self._configs[value] = _convert.from_dict(Config, raw)
            except ConfigError:
                self._configs[value] = None
        return self._configs[value]

    def estimate(self, value: int) -> Any:
        """The estimate at ``value``: an :class:`~jaxmem.estimate.Estimate`, None when the
        configuration has none (a forward task), or the ConfigError that refuses the value
        (e.g. a batch the mesh cannot split)."""
        if value not in self._estimates:
            config = self.config(value)
            try:
                self._estimates[value] = None if config is None else estimate(config)
            except ConfigError as e:
                self._estimates[value] = e
            except Exception:  # noqa: BLE001 - no estimate (forward task): still admissible
                self._estimates[value] = None
        return self._estimates[value]

    def admissible(self, value: int) -> bool:
        if not 1 <= value <= MAX_VALUE or self.config(value) is None:
            return False
        return not isinstance(self.estimate(value), ConfigError)

    def next_above(self, value: int) -> int | None:
        v = value + 1
        while v <= MAX_VALUE:
            if self.admissible(v):
                return v
            v += 1 if v - value < 4096 else v - value  # widen after a long gap
        return None

    def next_below(self, value: int) -> int | None:
        v = value - 1
        while v >= 1:
            if self.admissible(v):
                return v
            v -= 1
        return None


def compiled_bytes(config: Config) -> Probe:
    """Compiles ``config``'s step on abstract shapes: the figure ``fits`` uses, or a refusal
    for memory (does not fit)."""
    value = 0
    try:
        program = build_program(resolve(config))
        compiled, lower_s, compile_s = compile_timed(program.step, *program.abstract_args)
        report = MemoryReport.from_compiled(compiled, lower_seconds=lower_s,
                                            compile_seconds=compile_s)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the compiler's verdict is the probe's answer
        failure = classify(e)
        if failure.status == "oom":
            return Probe(value, None, False, "oom", failure.details.get("oom_required_bytes"))
        raise
    return Probe(value, fits_figure(report)[1], True)


def fit(config: Config, field: str = "data.batch_size", budget_bytes: int | None = None, *,
        check_below: bool = False,
        measure: Callable[[Config], Probe] = compiled_bytes) -> FitResult:
    """The largest admissible value of the integer ``field`` whose step fits ``budget_bytes``
    (default: the target's usable memory of one device), verified by compile.

    Args:
      config: the configuration to vary.
      field: a dotted integer field (``data.batch_size``, ``model.seq_len``, ...).
      budget_bytes: the memory per device to fit in.
      check_below: compile the admissible value just below the answer too (a smaller value
        that does not fit makes the fitting values not an interval; the answer stands either
        way). Off by default: it does not change the answer, so only the values the search
        compiled speak of intervals (``below_checked`` says whether the one below was).
      measure: how a value is checked (compiles by default; tests pass their own).

    Raises:
      ConfigError: the field is not an integer field, or no budget is known.
    """
    space = Space(config, field)
    if budget_bytes is None:
        budget_bytes = resolve(config).memory.bytes
        if budget_bytes is None:
            raise ConfigError("--budget", "the target does not report its memory; give a "
                              "budget (e.g. --budget 8GiB)", value=None)
    probes: dict[int, Probe] = {}

    def fits(value: int) -> bool:
        if value not in probes:
            probe = measure(space.config(value))
            fits_ = probe.fits and probe.bytes is not None and probe.bytes <= budget_bytes
            probes[value] = dataclasses.replace(probe, value=value, fits=fits_)
        return probes[value].fits

    prior = estimate_boundary(space, budget_bytes)
    start = prior if prior is not None else (space.start if space.admissible(space.start)
                                             else space.next_above(space.start))
    if start is None:
        return FitResult(space.field, None, None, 0, budget_bytes, prior, ())
    interval = True
    fits(start)
    corrected = _corrected(space, budget_bytes, probes[start])
    if corrected is not None and corrected != start:  # the estimate, scaled by its error there
        fits(corrected)
        secant = _secant(space, budget_bytes, probes[start], probes[corrected])
        start = corrected
        if secant is not None and secant != start:  # memory is near linear in a size
            fits(secant)
            start = secant
    if fits(start):
        best = _search_up(space, fits, start)
    else:
        best = _search_down(space, fits, start)
    # memory need not be monotone: compile the value past the first one that does not fit,
    # and go on above it if it fits again
    while best is not None:
        above = space.next_above(best)
        beyond = space.next_above(above) if above is not None else None
        if beyond is None or not fits(beyond):
            break
        interval = False
        best = _search_up(space, fits, beyond)
    next_value = space.next_above(best) if best is not None else None
    if next_value is not None:
        fits(next_value)
    below = space.next_below(best) if best is not None else None
    if below is not None and check_below:
        fits(below)
    # a smaller value that does not fit (among those compiled): not an interval
    if best is not None and any(p.value < best and not p.fits for p in probes.values()):
        interval = False
    ordered = tuple(probes.values())
    return FitResult(space.field, best, next_value, len(ordered), budget_bytes, prior, ordered,
                     interval, below is None or below in probes)


def _split(space: Space, value: int) -> tuple[int, int] | None:
    """``(exact, rest)`` bytes of the estimate at ``value`` (None: no estimate)."""
    e = space.estimate(value)
    if e is None or isinstance(e, ConfigError):
        return None
    exact = sum(t.bytes for t in e.terms if t.counted and t.name in ARGUMENT_TERMS)
    return exact, e.total_bytes - exact


def _corrected(space: Space, budget: int, probe: Probe) -> int | None:
    """The estimate's boundary again, with its error at the first compiled value divided out
    of the part it can be off on: the arguments are exact, so only the rest (activations,
    gradients, transients) is scaled by what the compile showed. The estimate is off by a
    similar factor at nearby values, so this lands within a value or two."""
    measured = probe.bytes if probe.bytes is not None else probe.needed
    split = _split(space, probe.value)
    if not measured or split is None:
        return None
    exact, rest = split
    if rest <= 0 or measured <= exact:
        scale = measured / max(exact + rest, 1)
        return _boundary(space, lambda s: (s[0] + s[1]) * scale, budget)
    k = (measured - exact) / rest
    return _boundary(space, lambda s: s[0] + k * s[1], budget)


def _secant(space: Space, budget: int, a: Probe, b: Probe) -> int | None:
    """The admissible value where the line through two compiled values meets the budget."""
    ma = a.bytes if a.bytes is not None else a.needed
    mb = b.bytes if b.bytes is not None else b.needed
    if not ma or not mb or ma == mb or a.value == b.value:
        return None
    target = a.value + (budget - ma) * (b.value - a.value) / (mb - ma)
    if not 1 <= target <= MAX_VALUE:
        return None
    return space.next_below(int(target) + 1)


def estimate_boundary(space: Space, budget: int) -> int | None:
    """The largest admissible value the estimate says fits (None: no estimate)."""
    return _boundary(space, lambda s: s[0] + s[1], budget)


def _boundary(space: Space, predict: Callable[[tuple[int, int]], float],
              budget: int) -> int | None:
    """The largest admissible value whose predicted bytes (``predict`` of the estimate's
    ``(exact, rest)`` split) are within ``budget``: galloping from the field's current
    value, then bisection (None: no estimate)."""

    def under(value: int) -> bool:
        s = _split(space, value)
        return s is not None and predict(s) <= budget

    lo = space.start if space.admissible(space.start) else space.next_above(space.start)
    if lo is None or _split(space, lo) is None:
        return None
    while not under(lo):  # walk down by halves to a value the estimate says fits
        smaller = space.next_above(lo // 2 - 1) if lo > 1 else None
        if smaller is None or smaller >= lo:
            return lo
        lo = smaller
    while True:  # gallop up to a value the estimate says does not fit
        up = space.next_above(lo * 2 - 1) if lo < MAX_VALUE // 2 else None
        if up is None:
            return lo
        if not under(up):
            return _bisect(space, under, lo, up)
        lo = up


def _search_up(space: Space, fits: Callable[[int], bool], start: int) -> int:
    """The largest fitting value from ``start`` (which fits) up: the next values one by one
    first (the estimate is usually close), then galloping, then bisection."""
    lo = start
    step = 1
    while True:
        above = space.next_above(lo)
        for _ in range(step - 1):
            above = space.next_above(above) if above is not None else None
        if above is None:
            return lo
        if not fits(above):
            break
        lo, step = above, step * 2
    return _bisect(space, fits, lo, above)


def _bisect(space: Space, ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest admissible value in ``[lo, hi)`` that is ``ok``, given ``ok(lo)`` and not
    ``ok(hi)``, by bisection over admissible values."""
    while True:
        mid = space.next_above((lo + hi) // 2 - 1)
        if mid is None or mid >= hi or mid <= lo:
            return lo
        if ok(mid):
            lo = mid
        else:
            hi = mid


def _search_down(space: Space, fits: Callable[[int], bool], start: int) -> int | None:
    """The largest fitting value below ``start`` (which does not fit)."""
    hi = start
    step = 1
    while True:
        below = hi
        for _ in range(step):
            below = space.next_below(below) if below is not None else None
        if below is None:
            below = space.next_above(0)
            if below is None or below >= hi or not fits(below):
                return None
            break
        if fits(below):
            break
        hi, step = below, step * 2
    return _bisect(space, fits, below, hi)


def fit_text(name: str, result: FitResult) -> str:
    """A few lines for the terminal: the answer, its bytes and headroom, the compiles."""
    from jaxmem.units import fmt_bytes

    budget = fmt_bytes(result.budget_bytes)
    head = f"{name}: " if name else ""
    if result.value is None:
        lines = [f"{head}no admissible {result.field} fits {budget}"]
    else:
        used = result.bytes_at(result.value)
        lines = [f"{head}{result.field} = {result.value} fits: {fmt_bytes(used)} of {budget} "
                 f"({fmt_bytes(result.budget_bytes - (used or 0))} headroom)"]
        if result.next_value is not None:
            nxt = result.bytes_at(result.next_value)
            lines.append(f"  {result.next_value} does not: "
                         f"{fmt_bytes(nxt) if nxt is not None else 'refused by the compiler'}")
    lines.append(f"  {result.compiles} compiles; the estimate predicted "
                 f"{result.estimate_value if result.estimate_value is not None else '-'}")
    if not result.interval:
        lines.append("  memory is not monotone here: a larger value fits again after one that "
                     "does not (the fitting values are not an interval)")
    elif result.value is not None and not result.below_checked:
        lines.append(f"  the value below {result.value} was not compiled (--check-below "
                     "checks that the fitting values below are an interval)")
    return "\n".join(lines)
