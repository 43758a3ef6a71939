"""Views of an :class:`~jaxmem.explain.Explanation`: the terminal text and the timeline PNG."""

from __future__ import annotations

from pathlib import Path

from jaxmem.explain import Explanation
from jaxmem.units import fmt_bytes


def write_text(e: Explanation, top: int = 15) -> str:
    """The terminal form: peak, largest buffers, totals by category and by source."""
    where = f" inside {e.peak_loop}" if e.peak_loop else ""
    lines = [f"{e.name}: peak {fmt_bytes(e.peak_bytes)} per device ({e.device_kind}) at "
             f"{e.peak_index}/{len(e.timeline)} {e.peak_instruction} "
             f"[{e.peak_op_name or '-'}]{where}"]
    lines.append(f"  top {min(top, len(e.buffers))} of {len(e.buffers)} buffers live at the peak:")
    for b in e.buffers[:top]:
        ck = f" ({b.checkpoint_name})" if b.checkpoint_name else ""
        lines.append(f"  {fmt_bytes(b.bytes):>11}  {b.category:<16} {b.dtype}{list(b.shape)}"
                     f"{ck}  {b.source or '-'}  {b.op_name[-60:]}")
    lines.append("  by category: " + ", ".join(f"{k} {fmt_bytes(v)}"
                                                for k, v in e.by_category.items()))
    lines.append("  by source:")
    for k, v in list(e.by_source.items())[:top]:
        lines.append(f"  {fmt_bytes(v):>11}  {k}")
    bar_max = max(e.timeline, default=1) or 1
    width = 60
    step = max(1, len(e.timeline) // width)
    spark = "".join(" ▁▂▃▄▅▆▇█"[min(8, round(8 * max(e.timeline[i:i + step]) / bar_max))]
                    for i in range(0, len(e.timeline), step))
    lines.append(f"  timeline (program order, max {fmt_bytes(bar_max)}): {spark}")
    return "\n".join(lines)


def plot(e: Explanation, path: str | Path, top_categories: int = 4) -> Path:
    """The timeline as a PNG: live bytes over program order, loops shaded, the peak marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    mib = [t / 2**20 for t in e.timeline]
    ax.plot(range(len(mib)), mib, lw=1.2, color="tab:blue")
    for op, a, b in e.loops:
        ax.axvspan(a, b, color="tab:gray", alpha=0.12)
        ax.text((a + b) / 2, min(mib), op.split("/", 1)[-1][-28:], ha="center", va="bottom",
                fontsize=6, color="dimgray")
    ax.axvline(e.peak_index, color="tab:red", lw=0.8)
    cats = list(e.by_category.items())[:top_categories]
    label = "\n".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in cats)
    ax.annotate(f"peak {e.peak_bytes / 2**20:.1f} MiB\n{label}", (e.peak_index, mib[e.peak_index]),
                fontsize=7, xytext=(5, -5), textcoords="offset points", va="top")
    ax.set_xlabel("position in the program order (loop bodies shaded)")
    ax.set_ylabel("live MiB per device")
    ax.set_title(f"{e.name} ({e.device_kind})", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
