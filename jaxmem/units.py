"""Human units for tables: binary bytes, seconds, counts, relative deltas.

Example:
  >>> from jaxmem.units import fmt_bytes, fmt_delta
  >>> fmt_bytes(3 * 2**20), fmt_delta(50, 100)
  ('3.0 MiB', '-50%')
"""

from __future__ import annotations

import re

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_count(n: float | None) -> str:
    """``124_439_808`` -> ``124.4M``; None -> ``-``."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def fmt_seconds(s: float | None) -> str:
    """Seconds with a unit that keeps 2-3 significant digits; None -> ``-``."""
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_delta(value: float | None, base: float | None) -> str:
    """Relative change against ``base`` as a signed percentage (``x256`` from 10 times up);
    empty when undefined."""
    if value is None or base is None or base == 0:
        return ""
    if value / base >= 10:  # a ratio reads better than +25500%
        return f"x{value / base:.0f}" if value / base >= 100 else f"x{value / base:.1f}"
    pct = 100.0 * (value - base) / base
    if abs(pct) < 0.05:
        return "="
    return f"{pct:+.0f}%" if abs(pct) >= 1 else f"{pct:+.1f}%"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``14GiB`` -> bytes (``GiB`` binary, ``GB`` decimal, a bare number is bytes).

    Raises:
      ValueError: not a size.
    """
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 14GiB, 512MiB, 16GB)")
    number, prefix, binary = float(m[1]), m[2].upper(), m[3]
    power = "KMGTP".index(prefix) + 1 if prefix else 0
    return int(number * (1024 if binary or not prefix else 1000) ** power)
