r"""What :func:`jaxmem.estimate.estimate` returns: an :class:`Estimate` of named :class:`Term`\ s.

Example:
  >>> from jaxmem.estimate_result import Estimate, Term
  >>> e = Estimate("x", 12, (Term("parameters", 8), Term("batch", 4)), "cpu", 0.0)
  >>> e.term("batch"), e.to_dict()["terms"]
  (4, {'parameters': 8, 'batch': 4})
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Term:
    """One line of an estimate, per device.

    Attributes:
      name: what it is (``parameters``, ``saved activations``, ...).
      bytes: its size on one device.
      detail: how it was computed, in words a user can check.
      counted: part of ``total_bytes`` (host-memory terms are listed, not counted).
    """

    name: str
    bytes: int
    detail: str = ""
    counted: bool = True


#: the terms that are the step's arguments, exact: the same shapes and shardings the step is
#: compiled with (the rest, activations, gradients and transients, is what can be off)
ARGUMENT_TERMS = ("parameters", "optimizer state", "batch")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An analytic per-device estimate of one configuration's step.

    Attributes:
      name: the configuration's name.
      total_bytes: the counted terms' sum (comparable with ``compiled.total_bytes``).
      terms: every term, in the order they are added.
      platform: the backend the estimate is for (``cpu``, ``tpu``, ``gpu``).
      seconds: how long the estimate took.
    """

    name: str
    total_bytes: int
    terms: tuple[Term, ...]
    platform: str
    seconds: float

    def term(self, name: str) -> int:
        """Bytes of the term called ``name`` (0 if absent)."""
        return sum(t.bytes for t in self.terms if t.name == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``name``, ``total_bytes``, ``platform``, ``terms`` (name -> bytes) and
        ``details`` (name -> how)."""
        return {"name": self.name, "total_bytes": self.total_bytes, "platform": self.platform,
                "terms": {t.name: t.bytes for t in self.terms},
                "details": {t.name: t.detail for t in self.terms}}

    def record(self, compiled_total: int | None = None) -> dict[str, Any]:
        """The ``estimate`` section of a record: ``total_bytes``, ``<term>_bytes``,
        ``seconds`` and, given the compiled total, ``error`` (estimate / compiled - 1)."""
        out: dict[str, Any] = {"total_bytes": self.total_bytes}
        for t in self.terms:
            if t.counted:
                out[t.name.replace(" ", "_") + "_bytes"] = t.bytes
        if compiled_total:
            out["error"] = self.total_bytes / compiled_total - 1
        out["seconds"] = self.seconds
        return out
