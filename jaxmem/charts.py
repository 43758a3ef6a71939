"""Quick charts of results: :func:`plot` (``jaxmem plot DIR --x FIELD --y FIELD``).

One line per group (``by``, e.g. ``config.remat.policy``) of ``y`` against ``x`` when ``x`` is
numeric, grouped bars when it is not; byte fields are drawn in MiB/GiB, with the unit on the
axis. Rows that failed are left out (their count is in the title). Needs the ``report``
extra (pandas, matplotlib).

Example:
  >>> import jaxmem
  >>> from jaxmem.charts import plot
  >>> exp = jaxmem.Experiment.from_dict({"model": {"kind": "mlp", "hidden": [64]},
  ...                                    "sweep": {"data.batch_size": [8, 16]}})
  >>> import tempfile, pathlib
  >>> out = pathlib.Path(tempfile.mkdtemp()) / "c.png"
  >>> plot(jaxmem.run(exp), "config.data.batch_size", "compiled.temp_bytes", out=out).exists()
  True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jaxmem.errors import ConfigError
from jaxmem.frame import load
from jaxmem.record import Record

_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "bytes"))


def scale(values: Sequence[float]) -> tuple[float, str]:
    top = max((abs(v) for v in values), default=0)
    return next(((d, u) for d, u in _UNITS if top >= d), (1, "bytes"))


def plot(source: str | os.PathLike | Sequence[Record], x: str, y: str, *, by: str | None = None,
         out: str | os.PathLike | None = None) -> Path:
    """Draws ``y`` against ``x`` (dotted record fields) and writes a PNG; returns its path
    (default: ``<y>_vs_<x>.png`` in the results folder, or the working directory).

    Raises:
      ConfigError: a field the results do not have (exit 2 from the CLI).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = load(source)
    for flag, field in (("--x", x), ("--y", y), ("--by", by)):
        if field is not None and field not in df:
            raise ConfigError(flag, "not a field of these results", value=field,
                              choices=sorted(c for c in df.columns if not c.startswith("env.")))
    ok = df[df["status"] == "ok"] if "status" in df else df
    failed = len(df) - len(ok)
    values = ok[y].astype(float)
    divisor, unit = scale(values) if y.endswith("_bytes") else (1, "")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = list(ok.groupby(by, sort=False)) if by else [(None, ok)]
    numeric = ok[x].dtype.kind in "iuf"
    if numeric:
        for name, g in groups:
            g = g.sort_values(x)
            ax.plot(g[x], g[y].astype(float) / divisor, marker="o",
                    label=None if name is None else str(name))
    else:
        labels = list(dict.fromkeys(ok[x].astype(str)))
        width = 0.8 / max(len(groups), 1)
        for k, (name, g) in enumerate(groups):
            pos = [labels.index(str(v)) + k * width for v in g[x]]
            ax.bar(pos, g[y].astype(float) / divisor, width,
                   label=None if name is None else str(name))
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(labels))],
                      labels, rotation=20, ha="right")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} ({unit})" if unit else y)
    ax.set_title(f"{y} vs {x}" + (f" ({failed} failed rows left out)" if failed else ""))
    if by:
        ax.legend(title=by)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if out is None:
        folder = (Path(source) if not isinstance(source, Sequence) or isinstance(source, str)
                  else Path.cwd())
        folder = folder if folder.is_dir() else folder.parent
        out = folder / f"{y.replace('.', '_')}_vs_{x.replace('.', '_')}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
