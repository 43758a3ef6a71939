"""Collective operations of a compiled program, read from its optimised HLO text.

Each all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute instruction is
counted with the bytes of its result on one device. The count is of instructions in the
program text: an instruction inside a loop body (a scanned layer stack) is counted once, like
XLA's cost analysis, so the figures are lower bounds for scanned stacks.

Example:
  >>> from jaxmem.collectives import count
  >>> hlo = '''
  ... %all-gather.1 = f32[128,64]{1,0} all-gather(%p), dimensions={0}
  ... %all-reduce.2 = (f32[16]{0}, bf16[8]{0}) all-reduce(%a, %b), to_apply=%add
  ... '''
  >>> count(hlo)
  {'all-gather': {'count': 1, 'bytes': 32768}, 'all-reduce': {'count': 1, 'bytes': 80}}
"""

from __future__ import annotations

import math
import re
from typing import Any

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
    r"(?P<op>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[subf]\d+|bf16|f8e\w+|c64|c128)\[(?P<dims>[\d,]*)\]")


def _bytes(dtype: str, dims: str) -> int:
    bits = 8 if dtype == "pred" else int(re.match(r"[a-z]+?(\d+)", dtype)[1])  # f8e4m3fn: 8
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    return n * bits // 8


def count(hlo_text: str) -> dict[str, dict[str, int]]:
    """``{kind: {"count": n, "bytes": b}}`` over the collectives in ``hlo_text`` (kinds that do
    not occur are left out). Asynchronous ``*-start`` instructions count their largest buffer
    (the result); their ``*-done`` halves are not counted again."""
    out: dict[str, dict[str, int]] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        sizes = [_bytes(a["dtype"], a["dims"]) for a in _ARRAY.finditer(m["shape"])]
        nbytes = max(sizes, default=0) if m["start"] else sum(sizes)
        entry = out.setdefault(m["op"], {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += nbytes
    return out


def of_compiled(compiled: Any) -> dict[str, dict[str, int]] | None:
    """:func:`count` of a ``jax.stages.Compiled``; None where the backend gives no HLO text."""
    try:
        text = compiled.as_text()
    except Exception:  # some compile-only backends do not print their program
        return None
    return count(text) if text else None


def summary(counts: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    """Record fields: total count and bytes, and per kind (``all_gather_count`` ...)."""
    if counts is None:
        return {}
    out: dict[str, Any] = {
        "collective_count": sum(v["count"] for v in counts.values()),
        "collective_bytes": sum(v["bytes"] for v in counts.values()),
    }
    for kind in KINDS:
        key = kind.replace("-", "_")
        out[f"{key}_count"] = counts.get(kind, {}).get("count", 0)
        out[f"{key}_bytes"] = counts.get(kind, {}).get("bytes", 0)
    return out
