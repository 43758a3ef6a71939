"""A results folder as one self-contained HTML page: :func:`write` (``jaxmem report DIR``).

What the page holds, each from the rows' own numbers:

* **memory per device**: one stacked bar per configuration from the compiled figures
  (parameters, optimizer state and batch, which are the step's arguments, then its other
  arguments, the outputs it does not write in place, and XLA's temporaries: activations,
  gradients, workspace), against the memory of one device of the row's target (a dashed line),
  with libtpu's peak and the run's device peak marked where the row has them; beside it the
  estimate's terms (shape formulas) where the rows have them, so the temporaries' split into
  saved activations, gradients and transients is shown as what it is, an estimate;
* **why**: each ``jaxmem explain`` of the experiment (``DIR/explain/*.json`` with its timeline
  PNG): the peak, where it is, bytes by category, and the largest buffers with their sources;
* the comparison **table** (every column), the **notes** (caveats, failures, the doctor's
  lines) and the **environment** (backend, devices, versions).

Charts are PNGs embedded as data URIs: the file can be mailed or attached as it is. Needs the
``report`` extra (matplotlib).

Example:
  >>> import jaxmem, tempfile, pathlib
  >>> exp = jaxmem.Experiment.from_dict({"model": {"kind": "mlp", "hidden": [64]},
  ...                                    "sweep": {"data.batch_size": [8, 16]}})
  >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.html"
  >>> page = jaxmem.write_report(jaxmem.run(exp), out=out).read_text()
  >>> page.count('src="data:image/png;base64,'), "http" in page.split("<body>")[1]
  (1, False)
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxmem import results
from jaxmem.charts import scale
from jaxmem.record import Record, versions
from jaxmem.report import baseline, caption, columns_for, row_cells
from jaxmem.units import fmt_bytes

#: what fills a compiled total, in stacking order, with its colour
COMPILED_PARTS = {
    "parameters": "#4c78a8",
    "optimizer state": "#f58518",
    "batch": "#54a24b",
    "other arguments": "#b3b3b3",
    "outputs (not in place)": "#b279a2",
    "temporaries (activations, gradients, workspace)": "#e45756",
}
#: the estimate's terms (``estimate.<term>_bytes``), in stacking order, with their colours
ESTIMATE_PARTS = {
    "parameters": "#4c78a8",
    "optimizer_state": "#f58518",
    "batch": "#54a24b",
    "parameter_copies": "#9ecae9",
    "gathered_parameters": "#72b7b2",
    "saved_activations": "#ff9da6",
    "gradients": "#eeca3b",
    "peak_transients": "#e45756",
}


#: figures drawn as markers on the compiled bars: marker and legend label
_MARKED = {"compiled.peak_bytes": ("D", "XLA peak (libtpu)"),
           "runtime.device_peak_bytes": ("X", "measured device peak")}
#: the device's memory is drawn when it is within this factor of the largest bar
_MEMORY_SCALE = 3


def compiled_parts(r: Record) -> dict[str, int] | None:
    """``r``'s compiled per-device total split into :data:`COMPILED_PARTS` (the parts sum to
    ``compiled.total_bytes``); the arguments stay whole where the analytic shares do not add up
    to them (host offload, say). None for a row without compiled figures."""
    c = r.compiled
    if not isinstance(c.get("total_bytes"), int):
        return None
    argument = c.get("argument_bytes", 0)
    shares = [r.get(f"analytic.{k}_bytes_per_device") for k in ("param", "opt_state", "batch")]
    parts: dict[str, int] = {}
    if all(isinstance(s, int) for s in shares) and sum(shares) <= argument:
        parts.update(zip(list(COMPILED_PARTS)[:3], shares, strict=True))
        parts["other arguments"] = argument - sum(shares)
    else:
        parts["other arguments"] = argument
    parts["outputs (not in place)"] = c.get("output_bytes", 0) - c.get("alias_bytes", 0)
    parts["temporaries (activations, gradients, workspace)"] = c.get("temp_bytes", 0)
    return parts


def _legend_right(ax: Any) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _bars(ax: Any, names: list[str], stacks: list[dict[str, int]], colors: dict[str, str],
          divisor: float, memory: list[Any]) -> None:
    """Horizontal stacked bars, first configuration on top; the device memory as a dashed
    tick across each bar."""
    left = [0.0] * len(names)
    for part, color in colors.items():
        widths = [s.get(part, 0) / divisor for s in stacks]
        if any(widths):
            ax.barh(range(len(names)), widths, 0.7, left=left, color=color,
                    label=part.replace("_", " "))
            left = [a + w for a, w in zip(left, widths, strict=True)]
    for i, m in enumerate(memory):
        if isinstance(m, (int, float)):
            ax.vlines(m / divisor, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label="memory of one device" if i == memory.index(m) else None)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def memory_chart(records: Sequence[Record]) -> str | None:
    """The stacked bars (see the module docstring) as a base64 PNG; None without ok rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r, p) for r in records if r.ok and (p := compiled_parts(r)) is not None]
    if not rows:
        return None
    names = [r.name for r, _ in rows]
    memory = [r.env.get("device_memory_bytes") for r, _ in rows]
    estimates = [{k: r.get(f"estimate.{k}_bytes", 0) or 0 for k in ESTIMATE_PARTS}
                 for r, _ in rows]
    has_estimate = any(any(e.values()) for e in estimates)
    tops = [sum(p.values()) for _, p in rows] + [sum(e.values()) for e in estimates]
    tops += [v for r, _ in rows for f in _MARKED if isinstance(v := r.get(f), int)]
    known = [m for m in memory if isinstance(m, (int, float))]
    off_scale = ""
    if known and max(known) > _MEMORY_SCALE * max(tops):  # the bars would be slivers
        off_scale = f"; one device has {fmt_bytes(max(known))}, off this scale"
        memory = [None] * len(memory)
    divisor, unit = scale(tops + [m for m in memory if isinstance(m, (int, float))])
    panels = 2 if has_estimate else 1
    fig, axes = plt.subplots(panels, 1, sharex=True, squeeze=False,
                             figsize=(11, panels * (0.32 * len(rows) + 1.3)))
    ax = axes[0][0]
    _bars(ax, names, [p for _, p in rows], COMPILED_PARTS, divisor, memory)
    for field, (marker, label) in _MARKED.items():
        points = [(i, r.get(field)) for i, (r, _) in enumerate(rows)
                  if isinstance(r.get(field), int)
                  and (field != "compiled.peak_bytes"
                       or r.get("compiled.fits_basis") == "peak_bytes")]
        if points:
            ax.scatter([v / divisor for _, v in points], [i for i, _ in points], marker=marker,
                       color="black", zorder=3, label=label)
    ax.set_title(f"compiled (XLA's memory analysis), per device{off_scale}", fontsize=10,
                 loc="left")
    _legend_right(ax)
    if has_estimate:
        ax2 = axes[1][0]
        _bars(ax2, names, estimates, ESTIMATE_PARTS, divisor, memory)
        ax2.set_title("estimate (shape formulas, no compile), per device", fontsize=10,
                      loc="left")
        _legend_right(ax2)
    axes[-1][0].set_xlabel(f"bytes per device ({unit})")
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.failed td{color:#b00}
img{max-width:100%}.muted{color:#666}ul.notes li{margin:.2em 0}
.scroll{overflow-x:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1,
           classes: Sequence[str] = ()) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>'
                   for i, h in enumerate(header))
    body = "".join(
        f'<tr class="{_e(classes[k]) if k < len(classes) else ""}">'
        + "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row))
        + "</tr>" for k, row in enumerate(rows))
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _results_table(records: Sequence[Record]) -> str:
    columns = columns_for(records)
    base = baseline(records)
    rows = [[r.index, r.name, *row_cells(r, columns, base)] for r in records]
    return _table(["#", "configuration", *(c.header for c in columns)], rows, left=2,
                  classes=["" if r.ok else "failed" for r in records])


def _environment(records: Sequence[Record]) -> str:
    keys = list(dict.fromkeys(k for r in records for k in r.env))
    rows = []
    for k in keys:
        values = list(dict.fromkeys(str(r.env.get(k)) for r in records if k in r.env))
        rows.append([k, "; ".join(values)])
    here = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (_table(["field", "value (distinct values over the rows)"], rows, left=2)
            + f'<p class="muted">this page was written with {_e(here)}</p>')


def _explanations(folder: Path, names: Sequence[str]) -> str:
    parts = []
    found = {p.stem: p for p in folder.glob("*.json")}
    order = [n for n in names if n in found] + sorted(set(found) - set(names))
    for path in (found[n] for n in order):
        try:
            e = json.loads(path.read_text(encoding="utf-8"))
            peak = int(e["peak_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an explanation jaxmem wrote
        where = e.get("peak_op_name") or e.get("peak_instruction", "")
        loop = f", inside the loop {e['peak_loop']}" if e.get("peak_loop") else ""
        parts.append(f"<h3>{_e(e.get('name', path.stem))} "
                     f"<span class='muted'>({_e(e.get('device_kind', ''))})</span></h3>"
                     f"<p>peak {_e(fmt_bytes(peak))} per device at position "
                     f"{_e(e.get('peak_index'))} of {len(e.get('timeline', []))}: "
                     f"<code>{_e(where)}</code>{_e(loop)}</p>")
        png = folder / str(e.get("timeline_png") or f"{path.stem}.png")
        if png.is_file():
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f'<img alt="timeline of {_e(path.stem)}" '
                         f'src="data:image/png;base64,{data}">')
        by_cat = e.get("by_category", {})
        parts.append(_table(["category", "bytes at the peak", "share"],
                            [[k, fmt_bytes(v), f"{v / peak:.0%}" if peak else "-"]
                             for k, v in by_cat.items()]))
        buffers = e.get("buffers", [])[:10]
        parts.append(_table(
            ["bytes", "shape", "dtype", "category", "checkpoint name", "source", "op_name"],
            [[fmt_bytes(b["bytes"]), "x".join(map(str, b["shape"])) or "()", b["dtype"],
              b["category"], b.get("checkpoint_name") or "", b.get("source") or "",
              (b.get("op_name") or "")[-70:]] for b in buffers], left=0))
    if not parts:
        return ""
    return ("<h2>Why: what is live at the peak (jaxmem explain)</h2>"
            f"<p class='muted'>from {_e(folder)}; the largest buffers first, with the source "
            "line that made them</p>" + "".join(parts))


def page(records: Sequence[Record], title: str, explain_dir: Path | None = None) -> str:
    """The HTML text of the report on ``records`` (explanations from ``explain_dir``)."""
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in statuses.items())
    chart = memory_chart(records)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    experiments = ", ".join(dict.fromkeys(r.experiment for r in records))
    body = [f"<h1>jaxmem: {_e(experiments)}</h1>",
            f"<p>{len(records)} configuration(s) from <code>{_e(title)}</code> ({_e(counts)}); "
            f"modes: {_e(', '.join(dict.fromkeys(r.mode for r in records)))}; "
            f"written {_e(when)}.</p>",
            "<h2>Memory per device</h2>"]
    if chart:
        body.append(f'<img alt="memory per device by configuration" '
                    f'src="data:image/png;base64,{chart}">')
        body.append("<p class='muted'>Top: XLA's compiled figures; the arguments are split "
                    "by the analytic per-device shares of parameters, optimizer state and batch. "
                    "Below, where present: the estimate's terms. Dashed: the memory of one "
                    "device of the target.</p>")
    else:
        body.append("<p>No configuration compiled: nothing to draw.</p>")
    body += ["<h2>Table</h2>", _results_table(records), "<h2>Notes</h2>",
             "<ul class='notes'>" + "".join(f"<li>{_e(line)}</li>"
                                           for line in caption(records).splitlines()) + "</ul>"]
    if explain_dir is not None and explain_dir.is_dir():
        body.append(_explanations(explain_dir, [r.name for r in records]))
    body += ["<h2>Environment</h2>", _environment(records)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>jaxmem: {_e(experiments)}</title><style>{_CSS}</style></head>"
            "<body>" + "\n".join(body) + "</body></html>\n")


def write(source: str | os.PathLike | Sequence[Record], out: str | os.PathLike | None = None,
          *, explain_dir: str | os.PathLike | None = None) -> Path:
    """Writes the report on a results folder (or ``results.jsonl``, or records) to ``out``
    (default: ``report.html`` in the results folder, or the working directory); returns it.
    Explanations come from ``explain_dir`` (default: the results folder's ``explain/``, where
    ``jaxmem explain`` writes them; none for records in memory). The file is written whole or
    not at all.

    Raises:
      OSError, ValueError: as :func:`jaxmem.results.read`.
    """
    if isinstance(source, Sequence) and not isinstance(source, str):
        records, folder, title = list(source), None, "records in memory"
    else:
        records = results.read(source)
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        title = str(source)
    explain = (Path(explain_dir) if explain_dir is not None
               else folder / "explain" if folder is not None else None)
    path = Path(out) if out is not None else (folder or Path.cwd()) / "report.html"
    results.replace_text(path, page(records, title, explain))
    return path
