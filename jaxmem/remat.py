"""Rematerialisation (gradient checkpointing) policies, by name.

A policy decides which intermediates of a block's forward pass are kept for the backward pass;
everything else is recomputed. Names:

* ``none``: no checkpoint, everything is kept. ``full``: only the block's inputs are kept.
* ``dots``: matmul outputs kept. ``dots_no_batch``: matmuls without batch dimensions (the
  projections, not the attention scores). ``minimal``: only the q/k/v and attention-output
  projections (checkpoint names ``query``, ``key``, ``value``, ``attn_out``).
* ``save:a+b``: only the values tagged ``a`` or ``b`` (``jax.ad_checkpoint.checkpoint_name``).
  ``except:a+b``: every tagged value but these. ``offload:a+b``: these are moved to pinned host
  memory instead of being recomputed (backends with memory kinds).
* JAX's own policies under their names: ``nothing_saveable``, ``everything_saveable``,
  ``dots_saveable``, ``checkpoint_dots``, ``dots_with_no_batch_dims_saveable``,
  ``checkpoint_dots_with_no_batch_dims``, ``offload_dot_with_no_batch_dims``.

The registry is a dict, and the parametric forms a dict of builders, so a new policy is an entry,
not a branch.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import remat
  >>> f = remat.wrap(lambda x: jnp.sin(jnp.sin(x)), "full")
  >>> float(f(jnp.float32(0.0)))
  0.0
  >>> remat.get("save:query+key").names
  ('query', 'key')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from jaxmem.errors import ConfigError

_cp = jax.checkpoint_policies
OFFLOAD_SRC, OFFLOAD_DST = "device", "pinned_host"


@dataclasses.dataclass(frozen=True)
class RematPolicy:
    """A named remat policy.

    Attributes:
      name: registry name (for parametric policies, the whole ``kind:a+b`` string).
      policy: a ``jax.checkpoint`` policy, or None to save nothing but the inputs.
      checkpoint: False for ``none``: the function is not wrapped at all.
      doc: one line for listings.
      names: checkpoint names the policy refers to (parametric policies).
      offloads: True when the policy moves residuals to host memory.
    """

    name: str
    policy: Callable[..., Any] | None
    checkpoint: bool
    doc: str
    names: tuple[str, ...] = ()
    offloads: bool = False


MINIMAL_NAMES = ("query", "key", "value", "attn_out")

POLICIES: dict[str, RematPolicy] = {
    p.name: p
    for p in [
        RematPolicy("none", None, False, "no remat: every intermediate is kept"),
        RematPolicy("full", _cp.nothing_saveable, True, "keep only block inputs; recompute all"),
        RematPolicy("dots", _cp.dots_saveable, True, "keep matmul outputs; recompute the rest"),
        RematPolicy("dots_no_batch", _cp.dots_with_no_batch_dims_saveable, True,
                    "keep matmuls without batch dims (projections, not attention scores)"),
        RematPolicy("minimal", _cp.save_only_these_names(*MINIMAL_NAMES), True,
                    "keep q/k/v and attention-output projections", names=MINIMAL_NAMES),
        # JAX's own policies, under their own names
        RematPolicy("nothing_saveable", _cp.nothing_saveable, True, "jax: save nothing"),
        RematPolicy("everything_saveable", _cp.everything_saveable, True,
                    "jax: save everything (checkpoint without savings)"),
        RematPolicy("dots_saveable", _cp.dots_saveable, True, "jax: save matmul outputs"),
        RematPolicy("checkpoint_dots", _cp.checkpoint_dots, True, "jax: save matmul outputs"),
        RematPolicy("dots_with_no_batch_dims_saveable", _cp.dots_with_no_batch_dims_saveable,
                    True, "jax: save matmuls without batch dims"),
        RematPolicy("checkpoint_dots_with_no_batch_dims",
                    _cp.checkpoint_dots_with_no_batch_dims, True,
                    "jax: save matmuls without batch dims"),
        RematPolicy("offload_dot_with_no_batch_dims",
                    _cp.offload_dot_with_no_batch_dims(OFFLOAD_SRC, OFFLOAD_DST), True,
                    "jax: offload matmuls without batch dims to pinned host", offloads=True),
    ]
}


def _save(names: tuple[str, ...]) -> RematPolicy:
    return RematPolicy(f"save:{'+'.join(names)}", _cp.save_only_these_names(*names), True,
                       "keep only these checkpoint names", names=names)


def _except(names: tuple[str, ...]) -> RematPolicy:
    return RematPolicy(f"except:{'+'.join(names)}", _cp.save_anything_except_these_names(*names),
                       True, "keep everything but these checkpoint names", names=names)


def _offload(names: tuple[str, ...]) -> RematPolicy:
    policy = _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=names,
        offload_src=OFFLOAD_SRC, offload_dst=OFFLOAD_DST)
    return RematPolicy(f"offload:{'+'.join(names)}", policy, True,
                       "move these checkpoint names to pinned host memory", names=names,
                       offloads=True)


PARAMETRIC: dict[str, Callable[[tuple[str, ...]], RematPolicy]] = {
    "save": _save,
    "except": _except,
    "offload": _offload,
}


def choices() -> list[str]:
    """Every valid name, the parametric ones as patterns."""
    return [*sorted(POLICIES), *(f"{k}:<name>+<name>" for k in PARAMETRIC)]


def get(name: str) -> RematPolicy:
    """The policy called ``name``; ConfigError listing the valid names otherwise."""
    if name in POLICIES:
        return POLICIES[name]
    kind, sep, rest = name.partition(":")
    if sep and kind in PARAMETRIC:
        names = tuple(rest.split("+"))
        if all(names):
            return PARAMETRIC[kind](names)
        raise ConfigError("remat.policy", f"expected {kind}:<name>+<name>", value=name)
    raise ConfigError("remat.policy", "unknown remat policy", value=name, choices=choices())


def jax_checkpoint(fn: Callable[..., Any], name: str, *, prevent_cse: bool = True):
    """``jax.checkpoint(fn)`` under policy ``name`` (``fn`` itself for ``none``); for pure
    functions of arrays."""
    p = get(name)
    if not p.checkpoint:
        return fn
    return jax.checkpoint(fn, policy=p.policy, prevent_cse=prevent_cse)


def wrap(fn: Callable[..., Any], name: str, *, prevent_cse: bool = True) -> Callable[..., Any]:
    """``fn`` checkpointed under policy ``name`` (``fn`` itself for ``none``).

    ``fn`` may take NNX modules as arguments (it is wrapped with ``nnx.remat``). Inside ``scan``
    pass ``prevent_cse=False``: the loop already stops XLA from merging the recompute.
    """
    p = get(name)
    if not p.checkpoint:
        return fn
    return nnx.remat(fn, policy=p.policy, prevent_cse=prevent_cse)


class Remat(nnx.Module):
    """An NNX module whose calls are checkpointed under a named policy (see :func:`apply`)."""

    def __init__(self, module: nnx.Module, policy: str):
        get(policy)
        self.module = module
        self.policy = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return wrap(lambda m, *a, **k: m(*a, **k), self.policy)(self.module, *args, **kwargs)


def apply(module_or_fn: nnx.Module | Callable[..., Any], policy: str):
    """Your own NNX module or function, checkpointed under ``policy``.

    A module comes back wrapped in :class:`Remat` (use it where the module was: its parameters
    are the same); a function comes back wrapped with ``nnx.remat``.

    Example:
      >>> from flax import nnx
      >>> from jaxmem import remat
      >>> layer = remat.apply(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), "minimal")
      >>> layer(jax.numpy.ones((2, 4))).shape
      (2, 4)
    """
    if isinstance(module_or_fn, nnx.Module):
        return Remat(module_or_fn, policy)
    return wrap(module_or_fn, policy)
