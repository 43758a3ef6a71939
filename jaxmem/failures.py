"""How a configuration that fails becomes a result row: its status, one line of error, and what
XLA said about memory when it refused.

* :class:`~jaxmem.errors.Unsupported`: ``unsupported`` (valid, but not on this backend).
* XLA refusing a step for lack of memory (libtpu at compile time, an allocator when running,
  Python's ``MemoryError``): ``oom``, with the bytes asked for and available where the message
  has them.
* :class:`TimedOut`: ``timeout``; :class:`Crashed` (a worker process died): ``crashed``, naming
  the signal and its likely cause.
* Anything else: ``error``.

Example:
  >>> from jaxmem.failures import classify
  >>> f = classify(RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total "
  ...     "memory required for HLO temporaries (108.03G) exceeds available HBM (15.75G)."))
  >>> f.status, round(f.details["oom_required_bytes"] / 2**30, 2)
  ('oom', 108.03)
"""

from __future__ import annotations

import dataclasses
import re
import signal
import traceback
from typing import Any

from jaxmem.errors import Unsupported


class TimedOut(RuntimeError):
    """A configuration ran past ``measure.timeout_s``."""


class Crashed(RuntimeError):
    """The process measuring a configuration died without answering."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """A failed configuration as its row tells it."""

    status: str
    error: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED|CompileTimeHbmOom|[Oo]ut of memory|"
                            r"MemoryError|std::bad_alloc")
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_SIZE = r"(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[KMGTP]?)(?:i?B\b|\s*bytes\b)?"
_REQUIRED = [re.compile(p) for p in (
    rf"required for [^(]*\({_SIZE}\)",  # libtpu: "... for HLO temporaries (108.03G) ..."
    rf"(?:trying to allocate|allocating|allocate) {_SIZE}",  # allocators
)]
_AVAILABLE = [re.compile(p) for p in (
    rf"available HBM \({_SIZE}\)",  # libtpu
    rf"Used [\d.]+[KMGTP]? of {_SIZE} hbm",  # libtpu's CompileTimeHbmOom
)]
_EXCEEDED = re.compile(rf"Exceeded \w+ capacity by {_SIZE}")


def _bytes(m: re.Match[str]) -> int:
    return round(float(m["n"]) * _UNITS[m["u"] or ""])


def oom_bytes(message: str) -> dict[str, int]:
    """``oom_required_bytes`` and ``oom_available_bytes`` as far as ``message`` says them
    (libtpu prints them to 0.01 GiB).

    Example:
      >>> oom_bytes("Used 15.75G of 15.75G hbm. Exceeded hbm capacity by 3.5K.")
      {'oom_available_bytes': 16911433728, 'oom_required_bytes': 16911437312}
    """
    out: dict[str, int] = {}
    for pattern in _AVAILABLE:
        if m := pattern.search(message):
            out["oom_available_bytes"] = _bytes(m)
            break
    for pattern in _REQUIRED:
        if m := pattern.search(message):
            out["oom_required_bytes"] = _bytes(m)
            break
    if "oom_required_bytes" not in out and "oom_available_bytes" in out:
        if m := _EXCEEDED.search(message):
            out["oom_required_bytes"] = out["oom_available_bytes"] + _bytes(m)
    return out


def is_out_of_memory(e: BaseException) -> bool:
    """True when ``e`` is a refusal for lack of memory (XLA's or Python's)."""
    return isinstance(e, MemoryError) or bool(_OUT_OF_MEMORY.search(str(e)))


#: what a signal that ends a worker usually means
SIGNAL_CAUSES = {
    "SIGABRT": "it aborted: most often a failed check inside XLA or libtpu",
    "SIGSEGV": "the process crashed (a segmentation fault in native code)",
    "SIGBUS": "the process crashed (a bus error in native code)",
    "SIGFPE": "the process crashed (an arithmetic fault in native code)",
    "SIGKILL": "killed from outside: most often the kernel's out-of-memory killer",
    "SIGTERM": "terminated from outside",
}


def describe_exit(returncode: int | None) -> str:
    """``killed by SIGABRT (the compiler aborted: ...)`` or ``exited with status 3``."""
    if returncode is None:
        return "ended without an exit status"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        cause = SIGNAL_CAUSES.get(name)
        return f"killed by {name}" + (f" ({cause})" if cause else "")
    return f"exited with status {returncode}"


def one_line_error(e: BaseException) -> str:
    """``Type: message`` on one line (its first three lines joined), for result rows.

    Example:
      >>> one_line_error(ValueError("bad\\nworse\\n\\nworst\\nmore"))
      'ValueError: bad | worse | worst'
    """
    msg = f"{type(e).__name__}: {e}".strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return " | ".join(lines[:3])[:2000] if lines else type(e).__name__


def describe_failure(e: BaseException) -> str:
    """The whole traceback, for a worker's log."""
    return "".join(traceback.format_exception(e))


_STATUS_OF = ((Unsupported, "unsupported"), (TimedOut, "timeout"), (Crashed, "crashed"))


def classify(e: BaseException) -> Failure:
    """The row a failure becomes."""
    for kind, status in _STATUS_OF:
        if isinstance(e, kind):
            return Failure(status, str(e))
    if is_out_of_memory(e):
        return Failure("oom", one_line_error(e), oom_bytes(str(e)))
    return Failure("error", one_line_error(e))
