"""Errors: bad input (:class:`ConfigError`, one line naming the field, the bad value and the
valid choices), what a backend cannot do (:class:`Unsupported`), and how any other failure is
told in a result row."""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from typing import Any

_NO_VALUE = object()


class ConfigError(ValueError):
    """Bad user input (experiment file, override, option). The CLI prints it on one line, exit 2.

    Args:
      path: dotted path of the offending field (``model.num_heads``), or a file, or ``--set``.
      problem: what is wrong, as a short phrase (``must divide d_model=128``).
      value: the offending value; left out of the message when not given.
      choices: the valid choices, when there is a finite set of them.

    Example:
      >>> e = ConfigError("remat.policy", "unknown policy", value="fulll", choices=["none", "full"])
      >>> str(e)
      "remat.policy: unknown policy, got 'fulll'; valid choices: none, full"
    """

    def __init__(
        self,
        path: str,
        problem: str,
        *,
        value: Any = _NO_VALUE,
        choices: Iterable[Any] | None = None,
        context: str = "",
    ):
        self.path = path
        self.problem = problem
        self.value = value
        self.choices = None if choices is None else [str(c) for c in choices]
        self.context = context
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"{self.path}: {self.problem}" if self.path else self.problem
        if self.value is not _NO_VALUE:
            msg += f", got {self.value!r}"
        if self.choices:
            msg += f"; valid choices: {', '.join(self.choices)}"
        if self.context:
            msg += f" ({self.context})"
        return msg.replace("\n", " ")

    def replace(self, *, path: str | None = None, problem: str | None = None,
                context: str | None = None) -> ConfigError:
        """The same error with another path, problem or context (value and choices kept)."""
        kwargs: dict[str, Any] = {"choices": self.choices,
                                  "context": self.context if context is None else context}
        if self.value is not _NO_VALUE:
            kwargs["value"] = self.value
        return ConfigError(self.path if path is None else path,
                           self.problem if problem is None else problem, **kwargs)

    def at(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` prepended to its path (``model`` + ``d_model``)."""
        return self.replace(path=f"{prefix}.{self.path}" if self.path else prefix)


def check_positive(name: str, value: int | float) -> None:
    """Raises ConfigError unless ``value`` > 0."""
    if value <= 0:
        raise ConfigError(name, "must be positive", value=value)


def check_choice(name: str, value: Any, choices: Iterable[Any], what: str = "value") -> None:
    """Raises ConfigError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(name, f"unknown {what}", value=value, choices=sorted(map(str, choices)))


class Unsupported(RuntimeError):
    """The backend cannot do what a valid configuration asks (e.g. host offload without memory
    kinds). The configuration's row gets ``status: unsupported`` and this message."""


# ------------------------------------------------------------- failures as result rows

#: How XLA says that a step cannot fit: at compile time (libtpu) or when allocating (GPU).
_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED|CompileTimeHbmOom")


def is_out_of_memory(e: BaseException) -> bool:
    """True when ``e`` is XLA refusing a step for lack of device memory.

    Example:
      >>> is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in hbm"))
      True
    """
    return bool(_OUT_OF_MEMORY.search(str(e)))


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
