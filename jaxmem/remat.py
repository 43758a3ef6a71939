"""Rematerialisation (gradient checkpointing) policies, by name.

A policy decides which intermediates of a block's forward pass are kept for the backward pass;
everything else is recomputed. ``none`` keeps everything (no checkpoint at all), ``full`` keeps
only the block's inputs. The registry is a dict so that new policies are one entry, not a branch.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import remat
  >>> f = remat.wrap(lambda x: jnp.sin(jnp.sin(x)), "full")
  >>> float(f(jnp.float32(0.0)))
  0.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jaxmem.errors import ConfigError

_cp = jax.checkpoint_policies


@dataclasses.dataclass(frozen=True)
class RematPolicy:
    """A named remat policy.

    Attributes:
      name: registry name.
      policy: a ``jax.checkpoint`` policy, or None to save nothing but the inputs.
      checkpoint: False for ``none``: the function is not wrapped at all.
      doc: one line for tables and ``--help``.
    """

    name: str
    policy: Callable[..., Any] | None
    checkpoint: bool
    doc: str


POLICIES: dict[str, RematPolicy] = {
    p.name: p
    for p in [
        RematPolicy("none", None, False, "no remat: every intermediate is kept for the backward"),
        RematPolicy("full", _cp.nothing_saveable, True, "keep only block inputs; recompute all"),
        RematPolicy("dots", _cp.dots_saveable, True, "keep matmul outputs; recompute the rest"),
        RematPolicy(
            "dots_no_batch",
            _cp.dots_with_no_batch_dims_saveable,
            True,
            "keep matmuls without batch dims (projections, not attention scores)",
        ),
    ]
}


def get(name: str) -> RematPolicy:
    """The policy called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError("remat.policy", "unknown remat policy", value=name,
                          choices=sorted(POLICIES)) from None


def wrap(fn: Callable[..., Any], name: str, *, prevent_cse: bool = True) -> Callable[..., Any]:
    """``fn`` checkpointed under policy ``name`` (``fn`` itself for ``none``).

    ``fn`` may take NNX modules as arguments (it is wrapped with ``nnx.remat``). Inside
    ``scan`` pass ``prevent_cse=False``: the loop already stops XLA from merging the recompute.
    """
    p = get(name)
    if not p.checkpoint:
        return fn
    return nnx.remat(fn, policy=p.policy, prevent_cse=prevent_cse)
