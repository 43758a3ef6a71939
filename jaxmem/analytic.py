"""Numbers computed from shapes and the jaxpr (source ``analytic``), all of them here.

* bytes and counts of pytrees, whole or per device under their shardings;
* what the forward pass keeps for the backward (:func:`saved_residuals`), from the jaxpr;
* the figures of a :class:`~jaxmem.program.Program` that a record carries (:func:`numbers`);
* what a jaxpr says about the model: its checkpoint names, remat outside loops;
* the textbook count of a transformer layer's activations (:func:`transformer_layer_bytes`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxmem import analytic
  >>> tree = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32), "b": jnp.zeros(8, jnp.bfloat16)}
  >>> analytic.tree_count(tree), analytic.tree_bytes(tree)
  (40, 144)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from jaxmem.program import Program


def _arrays(tree: Any) -> list[Any]:
    return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape") and hasattr(x, "dtype")]


def tree_count(tree: Any) -> int:
    """Number of elements in the array leaves of ``tree`` (arrays or ShapeDtypeStructs)."""
    return sum(int(np.prod(x.shape)) for x in _arrays(tree))


def tree_bytes(tree: Any) -> int:
    """Bytes held by the array leaves of ``tree``: elements x dtype size, summed."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in _arrays(tree))


def bytes_per_device(tree: Any) -> int:
    """Bytes of one device's shard of every array in ``tree`` (ShapeDtypeStructs or arrays
    with shardings; unsharded leaves count whole), on the most loaded device."""
    total = 0
    for x in _arrays(tree):
        placed = getattr(x, "sharding", None)
        shape = placed.shard_shape(x.shape) if placed is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


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



def program_residuals(program: Program) -> list[Residual] | None:
    """What a training program's forward pass keeps for the parameter gradients (the rest of
    the state and the batch get no gradient), for one microbatch when gradients are
    accumulated; None without a backward pass (or residual introspection in this jax)."""
    if program.objective is None:
        return None
    objective = program.objective
    k = program.config.data.microbatches  # accumulation keeps one microbatch's at a time
    batch = {name: jax.ShapeDtypeStruct((s.shape[0] // k, *s.shape[1:]), s.dtype)
             for name, s in program.batch.items()}
    return saved_residuals(
        lambda p, r, b: objective(p, jax.lax.stop_gradient(r), jax.lax.stop_gradient(b))[0],
        program.params, program.rest, batch,
    )


def numbers(program: Program) -> dict[str, Any]:
    """The ``analytic`` section of a record: whole-model and per-device bytes of the step's
    state and batch, the saved residuals (whole batch), and the task's own figures."""
    residuals = program_residuals(program)
    out = {
        "param_count": tree_count(program.params),
        "param_bytes": tree_bytes(program.params),
        "rest_bytes": tree_bytes(program.rest),
        "opt_state_bytes": tree_bytes(program.opt_state),
        "batch_bytes": tree_bytes(program.batch),
        "param_bytes_per_device": bytes_per_device(program.params),
        "opt_state_bytes_per_device": bytes_per_device(program.opt_state),
        "batch_bytes_per_device": bytes_per_device(program.batch),
        "argument_bytes_per_device": bytes_per_device(program.abstract_args),
        "residual_bytes": None if residuals is None else sum(r.bytes for r in residuals),
    }
    if program.cache is not None:  # decode: keys and values, every layer, batch x context
        out["kv_cache_bytes"] = tree_bytes(program.cache)
        out["context"] = int(jax.tree.leaves(program.cache)[0].shape[2])
    return out


# ---------------------------------------------------------------------- reading jaxprs

def sub_jaxprs(eqn: Any) -> Iterator[tuple[Any, bool]]:
    """``(jaxpr, is_loop_body)`` for every jaxpr nested in an equation's parameters."""
    loop = eqn.primitive.name in ("scan", "while")
    for value in eqn.params.values():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(v, "jaxpr", v)  # ClosedJaxpr -> Jaxpr
            if hasattr(inner, "eqns"):
                yield inner, loop


def checkpoint_names(jaxpr: Any) -> set[str]:
    """Every name ``jax.ad_checkpoint.checkpoint_name`` tags in ``jaxpr``, nested ones too."""
    names: set[str] = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "name" and isinstance(eqn.params.get("name"), str):
            names.add(eqn.params["name"])
        for sub, _ in sub_jaxprs(eqn):
            names |= checkpoint_names(sub)
    return names


def remat_outside_loops(jaxpr: Any, in_loop: bool = False) -> int:
    """How many checkpointed (remat) regions of ``jaxpr`` sit outside any scan or while loop:
    the blocks of a Python-loop stack, whose recomputation XLA:CPU may schedule early."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("checkpoint", "remat", "remat2") and not in_loop:
            count += 1
            continue
        for sub, loop in sub_jaxprs(eqn):
            count += remat_outside_loops(sub, in_loop or loop)
    return count


# ------------------------------------------------------------------ textbook accounting

def transformer_layer_bytes(seq: int, batch: int, hidden: int, heads: int, *,
                            bytes_per_value: int, mlp_ratio: int = 4) -> int:
    """Activations one transformer layer keeps for its backward without remat or dropout,
    after Korthikanti et al. 2022 (sec. 4.1): ``(8 + 2r)sbh + as^2b`` values, r the MLP
    ratio. With 2-byte values and r = 4 that is their ``32sbh + 2as^2b`` (their 34sbh + 5as^2b
    less the dropout masks and outputs).

    The terms, in values: the inputs of both LayerNorms (2sbh) and of the q/k/v projection
    (sbh); q, k and v (3sbh); the softmax output (as^2b); the attention context, input of the
    output projection (sbh); the MLP input (sbh), GELU input and output (2rsbh). LayerNorm
    statistics (two float32 per row each) are not in the formula.

    Example:
      >>> from jaxmem.analytic import transformer_layer_bytes
      >>> transformer_layer_bytes(1024, 8, 768, 12, bytes_per_value=2) == (
      ...     32 * 1024 * 8 * 768 + 2 * 12 * 1024**2 * 8)
      True
    """
    s, b, h, a = seq, batch, hidden, heads
    return ((8 + 2 * mlp_ratio) * s * b * h + a * s * s * b) * bytes_per_value


#: frames that are not the user's: jax, flax, optax and jaxmem's helpers
LIBRARY_FILES = ("/jax/", "/jaxlib/", "/flax/", "/optax/", "/chex/", "<frozen ",
                 "/jaxmem/sharding.py", "/jaxmem/remat.py", "/jaxmem/precision.py")


def user_frame(frames: Any) -> tuple[str, int] | None:
    """The innermost ``(file, line)`` outside jax, flax, optax and jaxmem's helpers."""
    return next(((f, n) for f, n in frames if not any(lib in f for lib in LIBRARY_FILES)),
                None)


def jaxpr_checkpoint_names(jaxpr: Any) -> dict[tuple[str, int], str]:
    """``(file, line) -> name`` for every ``checkpoint_name`` in a (closed) jaxpr.

    Both the line of the ``checkpoint_name`` call and the line that made the named value are
    mapped, so a buffer finds its name whichever of the two XLA kept.
    """
    out: dict[tuple[str, int], str] = {}

    def frames(eqn: Any) -> list[tuple[str, int]]:
        tb = eqn.source_info.traceback
        frame = None if tb is None else user_frame(
            [(f.file_name, f.line_num) for f in tb.frames])
        return [frame] if frame else []

    def walk(jx: Any) -> None:
        made = {}
        for eqn in jx.eqns:
            for v in eqn.outvars:
                made[v] = eqn
            if eqn.primitive.name == "name":
                label = eqn.params.get("name")
                for f in frames(eqn):
                    out.setdefault(f, label)
                src = made.get(eqn.invars[0]) if eqn.invars else None
                if src is not None:
                    for f in frames(src):
                        out.setdefault(f, label)
            for sub, _ in sub_jaxprs(eqn):
                walk(sub)
    walk(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr)
    return out
