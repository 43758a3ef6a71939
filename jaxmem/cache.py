"""JAX's persistent compilation cache, for the processes that compile configurations.

The CLI turns it on by default in a user cache folder (``$JAXMEM_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxmem/xla`` or ``~/.cache/jaxmem/xla``; ``--no-cache`` turns it off), so
that measuring a configuration again (another sweep, ``--resume`` after a crash) skips XLA's
work. Where it applies, found with jax 0.10.2:

* ``local`` and ``cpu:N`` targets: yes; a hit returns the executable and its memory analysis
  (JAX caches compiles that took at least ``jax_persistent_cache_min_compile_time_secs``, 1 s).
* compile-only targets (``tpu:``, ``gpu:``): no. JAX writes the entry but cannot read it back
  ("PjRtCompiler must be constructed with a Client to call DeserializeLoadedExecutable"): a
  deviceless topology has no client to load an executable into. jaxmem leaves the cache off
  for a run that has such a target, rather than write entries no run can use.

Example:
  >>> from jaxmem import cache
  >>> cache.applies(["local", "cpu"]), cache.applies(["cpu", "tpu"])
  (True, False)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax

#: target families whose compiles JAX's persistent cache can serve
FAMILIES = ("local", "cpu")
_HITS = "/jax/compilation_cache/cache_hits"
_counts = {"hits": 0}
_listening = False


def default_dir() -> Path:
    """Where the CLI keeps the cache unless told otherwise."""
    if env := os.environ.get("JAXMEM_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxmem" / "xla"


def applies(families: Iterable[str]) -> bool:
    """Whether the cache can serve every one of these target families."""
    return all(f in FAMILIES for f in families)


def enable(directory: str | os.PathLike) -> None:
    """Turns JAX's persistent compilation cache on in this process (before its first compile)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(directory))


def _listen() -> None:
    global _listening
    if _listening:
        return

    def on_event(name: str, **_: object) -> None:
        if name == _HITS:
            _counts["hits"] += 1

    jax.monitoring.register_event_listener(on_event)
    _listening = True


@contextlib.contextmanager
def cache_events() -> Iterator[list[int]]:
    """Counts persistent-cache hits inside the block: ``with cache_events() as hits``; after
    it, ``hits`` holds one item per hit."""
    _listen()
    before = _counts["hits"]
    hits: list[int] = []
    try:
        yield hits
    finally:
        hits.extend(range(_counts["hits"] - before))
