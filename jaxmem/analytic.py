"""Numbers computed from shapes alone (source ``analytic``): counts and bytes of pytrees.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxmem import analytic
  >>> tree = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32), "b": jnp.zeros(8, jnp.bfloat16)}
  >>> analytic.tree_count(tree), analytic.tree_bytes(tree)
  (40, 144)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def _arrays(tree: Any) -> list[Any]:
    return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape") and hasattr(x, "dtype")]


def tree_count(tree: Any) -> int:
    """Number of elements in the array leaves of ``tree`` (arrays or ShapeDtypeStructs)."""
    return sum(int(np.prod(x.shape)) for x in _arrays(tree))


def tree_bytes(tree: Any) -> int:
    """Bytes held by the array leaves of ``tree``: elements x dtype size, summed."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in _arrays(tree))


@dataclasses.dataclass(frozen=True)
class Residual:
    """One value the forward pass keeps for the backward pass.

    Attributes:
      shape, dtype: of the saved value.
      bytes: its size.
      source: JAX's description (checkpoint name or the op and source line producing it).
    """

    shape: tuple[int, ...]
    dtype: str
    bytes: int
    source: str

    @property
    def what(self) -> str:
        """The checkpoint name (``query``) or the producing op (``mul``, ``jit:_where``)."""
        m = _SOURCE.match(self.source)
        if not m:
            return self.source.split(" from ")[0]
        return m["name"] or (f"jit:{m['jitted']}" if m["jitted"] else m["op"])

    @property
    def where(self) -> str:
        """``file.py:line (function)`` of the producing code, or empty."""
        m = _SOURCE.match(self.source)
        where = (m["where"] if m else None) or ""
        path, sep, rest = where.partition(":")
        return f"{os.path.basename(path)}{sep}{rest}" if sep else where


_SOURCE = re.compile(
    r"^(?:named '(?P<name>[^']+)'|output of (?:jitted function '(?P<jitted>[^']+)'|(?P<op>\S+)))"
    r"(?: from (?P<where>.*))?$"
)


def saved_residuals(fn: Callable[..., Any], *args: Any) -> list[Residual] | None:
    """What differentiating ``fn(*args)`` saves for the backward pass, from the jaxpr.

    This is the program as JAX writes it, before XLA fuses or rematerialises anything, so it is
    backend-independent: it shows what a remat or precision policy asks to keep. Inputs of
    ``fn`` (already counted as arguments) and literals are left out. Returns None where this
    JAX version has no residual introspection.
    """
    try:
        from jax._src.ad_checkpoint import saved_residuals as _saved
    except ImportError:  # private API; moved or gone in this jax
        return None
    out = []
    for aval, source in _saved(fn, *args):
        if "from the argument" in source or "from a literal" in source:
            continue
        shape = tuple(int(d) for d in aval.shape)
        nbytes = int(np.prod(shape)) * np.dtype(aval.dtype).itemsize
        out.append(Residual(shape, str(aval.dtype), nbytes, source))
    return out

