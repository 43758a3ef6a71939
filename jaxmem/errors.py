"""Errors: bad input (:class:`ConfigError`, one line naming the field, the bad value and the
valid choices) and what a backend cannot do (:class:`Unsupported`). How other failures become
result rows is ``jaxmem.failures``."""

from __future__ import annotations

import reprlib
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
            msg += f", got {_short_repr(self.value)}"
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


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut at ``limit`` characters (a bad value may be a whole document)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 3, 8, 8
    short.maxstring = short.maxother = limit
    try:
        text = short.repr(value)
    except Exception:  # a value whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
