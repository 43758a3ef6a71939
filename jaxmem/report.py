"""The terminal comparison table: one row per configuration, deltas against the first.

Example:
  >>> from jaxmem.record import Record
  >>> from jaxmem.report import table
  >>> rows = [Record("e", i, f"c{i}", "compile", "ok", compiled={"temp_bytes": t})
  ...         for i, t in enumerate([2048, 1024])]
  >>> table(rows).row_count
  2
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from jaxmem.analytic import Residual
from jaxmem.doctor import doctor_line
from jaxmem.errors import ConfigError
from jaxmem.measure import fits_explanation
from jaxmem.record import Record
from jaxmem.units import fmt_bytes, fmt_count, fmt_delta, fmt_seconds


@dataclass(frozen=True)
class Column:
    """A table column: header, the record field it shows, formatter, whether to show a delta,
    and whether it appears only when some row has a non-zero value."""

    header: str
    field: str
    fmt: Callable[[float | None], str]
    delta: bool = False
    optional: bool = False
    #: shown only when some row's value differs from this field's (e.g. a sharded share)
    unless_equal: str | None = None
    #: shown only when some ok row satisfies this
    when: Callable[[Record], bool] | None = None
    #: a relative error (a fraction) shown after the value, e.g. the estimate's
    error: str | None = None
    #: which columns a narrow terminal keeps: lower first (``fit_width`` drops the highest)
    priority: int = 5

    def shown(self, records: Sequence[Record]) -> bool:
        if self.when is not None:
            return any(self.when(r) for r in records if r.ok)
        if self.unless_equal:
            return any(r.get(self.field) != r.get(self.unless_equal) for r in records if r.ok)
        return not self.optional or any(r.get(self.field) for r in records)


def fmt_headroom(value: float | None) -> str:
    """``fits (1.2 GiB free)`` or ``NO (short 3.4 GiB)``."""
    if value is None:
        return "-"
    return f"yes ({fmt_bytes(value)} free)" if value >= 0 else f"NO (short {fmt_bytes(-value)})"


#: Headers say what a figure covers: ``/dev`` one device (the most loaded), ``/all`` the whole
#: model or the whole global batch (all devices together).
COMPILE_COLUMNS = (
    Column("params", "analytic.param_count", fmt_count, priority=6),
    Column("params/all", "analytic.param_bytes", fmt_bytes, delta=True, priority=7),
    Column("params/dev", "analytic.param_bytes_per_device", fmt_bytes, delta=True,
           unless_equal="analytic.param_bytes", priority=4),
    Column("opt/dev", "analytic.opt_state_bytes_per_device", fmt_bytes, delta=True,
           unless_equal="analytic.opt_state_bytes", priority=5),
    Column("state/all", "analytic.rest_bytes", fmt_bytes, optional=True, priority=8),
    Column("KV cache/all", "analytic.kv_cache_bytes", fmt_bytes, delta=True, optional=True,
           priority=2),
    Column("argument/dev", "compiled.argument_bytes", fmt_bytes, priority=4),
    Column("temp/dev", "compiled.temp_bytes", fmt_bytes, delta=True, priority=2),
    Column("total/dev", "compiled.total_bytes", fmt_bytes, delta=True, priority=0),
    Column("estimate/dev", "estimate.total_bytes", fmt_bytes, optional=True,
           error="estimate.error", priority=6),
    Column("peak/dev", "compiled.peak_bytes", fmt_bytes, delta=True,
           when=lambda r: r.get("compiled.fits_basis") == "peak_bytes", priority=1),
    Column("fits", "compiled.headroom_bytes", fmt_headroom, optional=True, priority=1),
    Column("host arg/dev", "compiled.host_argument_bytes", fmt_bytes, optional=True,
           priority=5),
    Column("host temp/dev", "compiled.host_temp_bytes", fmt_bytes, optional=True, priority=5),
    Column("collectives", "compiled.collective_count", fmt_count, optional=True, priority=8),
    Column("coll/dev", "compiled.collective_bytes", fmt_bytes, optional=True, priority=6),
    Column("saved/all", "analytic.residual_bytes", fmt_bytes, delta=True, priority=3),
    Column("FLOPs/dev", "compiled.flops", fmt_count, priority=7),
    Column("compile", "compiled.compile_seconds", fmt_seconds, priority=9),
)
RUN_COLUMNS = (
    Column("step", "runtime.step_time_s", fmt_seconds, delta=True, priority=1),
    Column("device peak", "runtime.device_peak_bytes", fmt_bytes, delta=True, priority=0),
    Column("host RSS", "runtime.host_peak_rss_bytes", fmt_bytes, priority=7),
    Column("ckpt save", "runtime.checkpoint_save_s", fmt_seconds, optional=True, priority=6),
    Column("ckpt restore", "runtime.checkpoint_restore_s", fmt_seconds, delta=True,
           optional=True, priority=4),
    Column("restore host+", "runtime.checkpoint_restore_host_peak_bytes", fmt_bytes,
           delta=True, optional=True, priority=3),
    Column("restore dev peak", "runtime.checkpoint_restore_device_peak_bytes", fmt_bytes,
           delta=True, optional=True, priority=3),
    Column("ckpt on disk", "runtime.checkpoint_bytes_on_disk", fmt_bytes, optional=True,
           priority=7),
)
ALL_COLUMNS = COMPILE_COLUMNS + RUN_COLUMNS


#: figures XLA counts once per loop body: lower bounds for scanned stacks
_LOOP_COUNTED = ("compiled.flops", "compiled.collective_count", "compiled.collective_bytes")


def baseline(records: Sequence[Record]) -> Record | None:
    return next((r for r in records if r.ok), None)


def columns_for(records: Sequence[Record], hide: Sequence[str] = (),
                only: Sequence[str] | None = None) -> list[Column]:
    """The columns ``records`` have something to show in (``only``: these headers, in this
    order; ``hide``: fields to leave out)."""
    if only is not None:
        by_header = {c.header: c for c in ALL_COLUMNS}
        unknown = [h for h in only if h not in by_header]
        if unknown:
            raise ConfigError("--columns", "unknown column", value=unknown[0],
                              choices=list(by_header))
        return [by_header[h] for h in only]
    columns = [c for c in COMPILE_COLUMNS if c.field not in hide]
    if any(r.mode == "run" for r in records):
        columns += RUN_COLUMNS
        if not any(r.get("runtime.device_peak_bytes") is not None for r in records):
            columns = [c for c in columns if c.field != "runtime.device_peak_bytes"]
    columns = [c for c in columns if c.shown(records)]
    if any(c.field == "analytic.param_bytes_per_device" for c in columns):
        columns = [c for c in columns if c.field != "analytic.param_bytes"]  # room
    return columns


def fit_width(records: Sequence[Record], width: int, title: str | None = None,
              columns: Sequence[Column] | None = None) -> Table:
    """The table of ``records`` in at most ``width`` characters: columns dropped from the
    least important (:attr:`Column.priority`) until every cell shows whole; the caption
    names the columns left out."""
    columns = list(columns_for(records) if columns is None else columns)
    console = Console(width=10_000, file=io.StringIO())
    dropped: list[Column] = []
    while True:
        t = table(records, title, columns=columns, dropped=dropped)
        if not columns or Measurement.get(console, console.options, t).maximum <= width:
            return t
        worst = max(columns, key=lambda c: (c.priority, columns.index(c)))
        columns.remove(worst)
        dropped.append(worst)


def table(records: Sequence[Record], title: str | None = None,
          hide: Sequence[str] = (), *, columns: Sequence[Column] | None = None,
          dropped: Sequence[Column] = ()) -> Table:
    """A rich Table of ``records`` (``hide``: fields whose columns to leave out; ``columns``:
    exactly these; ``dropped``: columns left out for width, named in the caption)."""
    columns = list(columns_for(records, hide) if columns is None else columns)
    base = baseline(records)
    caption_text = caption(records)
    if dropped:
        caption_text += ("\nleft out to fit the terminal (--wide shows all, --columns "
                         "chooses): " + ", ".join(c.header for c in dropped))
    t = Table(title=title and escape(title), caption=escape(caption_text), caption_justify="left")
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("configuration", no_wrap=True)
    for c in columns:
        t.add_column(c.header, justify="right", no_wrap=True)
    for r in records:
        cells = row_cells(r, columns, base)
        if not r.ok:
            t.add_row(str(r.index), escape(r.name), f"[red]{escape(cells[0])}[/red]",
                      *cells[1:])
            continue
        t.add_row(str(r.index), escape(r.name), *(escape(c) for c in cells))
    return t


def row_cells(r: Record, columns: Sequence[Column], base: Record | None) -> list[str]:
    """The text of ``r``'s cells under ``columns`` (a failed row: its status, then dashes),
    deltas against ``base``."""
    if not r.ok:
        return [r.status, *["-"] * (len(columns) - 1)]
    cells = []
    for c in columns:
        value = r.get(c.field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            cells.append(str(value)[:24])  # not a number: shown as it is
            continue
        text = c.fmt(value)
        if c.field in _LOOP_COUNTED and value is not None and r.get("compiled.cost_has_loops"):
            text = ">=" + text
        err = r.get(c.error) if c.error else None
        if isinstance(err, (int, float)):
            text += f" ({err:+.0%})"
        base_value = base.get(c.field) if base is not None else None
        if c.delta and isinstance(base_value, (int, float)) and r is not base:
            d = fmt_delta(value, base_value)
            if d:
                text += f" ({d})"
        cells.append(text)
    return cells


def caption(records: Sequence[Record]) -> str:
    ok = [r for r in records if r.ok]
    errors = [f"{r.status} in row {r.index}: {r.error}" for r in records if not r.ok]
    if not ok:
        return "\n".join([*errors, *(f"row {r.index}: {doctor_line(r.doctor)}"
                                     for r in records if r.doctor)])
    devices = list(dict.fromkeys(f"{r.env.get('device_kind')} x{r.env.get('device_count')}"
                                 for r in ok))
    lines = [f"on {', '.join(devices)}; '/dev': one device (the most loaded), '/all': the "
             f"whole model or global batch; deltas against row {ok[0].index}; 'saved': what "
             "the forward keeps for the backward (activations, compute-dtype copies of "
             "parameters), from the jaxpr"]
    notes = dict.fromkeys(n for r in ok for n in r.notes)
    lines += [f"note: {n}" for n in notes]
    if any(r.get("compiled.cost_has_loops") for r in ok):
        lines.append(">=: the step has loops (a scanned layer stack) and XLA counts a loop "
                     "body once: FLOPs and collectives are lower bounds")
    memory = dict.fromkeys((r.env["device_memory_bytes"], r.env.get("device_memory_source"),
                            r.get("compiled.platform")) for r in ok
                           if isinstance(r.env.get("device_memory_bytes"), (int, float)))
    lines += [f"fits: {fits_explanation(platform)}; against {fmt_bytes(m)} per device ({src})"
              for m, src, platform in memory]
    stats = dict.fromkeys(r.get("runtime.device_stats") for r in ok if r.mode == "run")
    lines += [f"device memory: {s}; 'host RSS' is the worker process's peak host memory"
              for s in stats if s and s != "available"]
    lines += errors
    lines += [f"row {r.index}: {doctor_line(r.doctor)}" for r in records if r.doctor]
    return "\n".join(lines)


def print_table(records: Sequence[Record], title: str | None = None,
                console: Console | None = None, *, wide: bool = False,
                columns: Sequence[str] | None = None) -> None:
    """Prints the table to ``console`` (stdout; its width from the terminal or ``COLUMNS``,
    240 when writing to a file): columns dropped by priority to fit, unless ``wide``;
    ``columns``: these headers only."""
    console = console or wide_console()
    chosen = columns_for(records, only=columns) if columns is not None else None
    if wide:
        console = Console(width=max(console.width, 10_000), soft_wrap=True)
        console.print(table(records, title, columns=chosen))
        return
    console.print(fit_width(records, console.width, title, chosen))


def render_text(records: Sequence[Record], title: str | None = None,
                hide: Sequence[str] = (), width: int = 200) -> str:
    """:func:`table` as plain text, ``width`` columns wide (for files such as the README)."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table(records, title, hide))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def residual_rows(residuals: Sequence[Residual]) -> list[tuple[str, str, str, str, int, int]]:
    """Residuals grouped by (what, where, shape, dtype): ``(..., count, bytes)``, largest
    first."""
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for r in residuals:
        key = (r.what, r.where, "x".join(map(str, r.shape)) or "scalar", r.dtype)
        groups.setdefault(key, []).append(r.bytes)
    rows = [(*key, len(sizes), sum(sizes)) for key, sizes in groups.items()]
    return sorted(rows, key=lambda row: -row[5])


def residual_table(residuals: Sequence[Residual], title: str | None = None,
                   note: str = "") -> Table:
    """The saved residuals of one configuration, grouped, with the total."""
    t = Table(title=title, caption_justify="left")
    for header, justify in (("saved value", "left"), ("where", "left"), ("shape", "left"),
                            ("dtype", "left"), ("count", "right"), ("bytes", "right")):
        t.add_column(header, justify=justify, no_wrap=True)
    for what, where, shape, dtype, count, nbytes in residual_rows(residuals):
        t.add_row(what, where, shape, dtype, str(count), fmt_bytes(nbytes))
    total = sum(r.bytes for r in residuals)
    t.caption = (f"total {fmt_bytes(total)} in {len(residuals)} values, whole batch, from the "
                 "jaxpr before XLA fusion" + (f"\n{note}" if note else ""))
    return t


ESTIMATE_TERMS = ("parameters", "optimizer state", "batch", "saved activations",
                  "parameter copies", "gathered parameters", "gradients", "peak transients")


def estimate_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> Table:
    """One row per configuration: the estimate's total and its terms, per device
    (``rows``: ``(name, Estimate or a failure line)``)."""
    shown = [n for n in ESTIMATE_TERMS
             if any(not isinstance(e, str) and e.term(n) for _, e in rows)]
    t = Table(title=title and escape(title), caption_justify="left",
              caption="per device, from shape formulas (custom models: their jaxpr), no "
                      "compile; 'jaxmem run' compares it with the compiled figure")
    t.add_column("configuration", no_wrap=True)
    t.add_column("estimate/dev", justify="right", no_wrap=True)
    for n in shown:
        t.add_column(n, justify="right", no_wrap=True)
    t.add_column("ms", justify="right", no_wrap=True)
    for name, e in rows:
        if isinstance(e, str):
            t.add_row(escape(name), f"[red]{escape(e)}[/red]", *["-"] * (len(shown) + 1))
            continue
        t.add_row(escape(name), fmt_bytes(e.total_bytes),
                  *(fmt_bytes(e.term(n)) for n in shown), f"{1e3 * e.seconds:.1f}")
    return t


def plan_table(rows: Sequence[dict[str, str]], title: str | None = None,
               caption: str = "") -> Table:
    """``jaxmem plan``: the best candidates and the baseline (``jaxmem.plan.plan_rows``)."""
    t = Table(title=title and escape(title), caption_justify="left", caption=escape(caption))
    for header in (rows[0] if rows else {}):
        t.add_column(header, no_wrap=header != "changes",
                     justify="left" if header in ("#", "changes") else "right")
    for row in rows:
        t.add_row(*(escape(v) for v in row.values()))
    return t


def targets_table(listings: Sequence[Any]) -> Table:
    """``jaxmem targets``: name, devices, memory per device, whether usable here."""
    t = Table(title="targets (target.name)", caption_justify="left",
              caption="compile-only targets (tpu:, gpu:) plan memory without the hardware; "
                      "'usable' is what XLA may use on one device, what a row's 'fits' is "
                      "checked against")
    for header in ("target", "devices", "usable / device", "from", "available here", "what"):
        t.add_column(header, no_wrap=header not in ("what", "from"))
    for x in listings:
        t.add_row(escape(x.name), x.devices, fmt_bytes(x.memory.bytes),
                  escape(x.memory.source), escape(x.available), escape(x.doc))
    return t


def wide_console() -> Console:
    """stdout, as wide as the terminal, or ``COLUMNS`` when set; 240 columns wide when not a
    terminal, so tables do not wrap in files."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(width=max(console.width, 240))
