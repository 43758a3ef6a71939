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

:func:`apply` is the one way to use a policy: on an NNX module, or on a function.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import remat
  >>> f = remat.apply(lambda x: jnp.sin(jnp.sin(x)), "full")
  >>> float(f(jnp.float32(0.0)))
  0.0
  >>> remat.get("save:query+key").names
  ('query', 'key')
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
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


@functools.cache
def get(name: str) -> RematPolicy:
    """The policy called ``name`` (the same object for the same name, so that modules holding
    it compare equal); ConfigError listing the valid names otherwise."""
    if name in POLICIES:
        return POLICIES[name]
    kind, sep, rest = name.partition(":")
    if sep and kind in PARAMETRIC:
        names = tuple(rest.split("+"))
        if all(names):
            return PARAMETRIC[kind](names)
        raise ConfigError("remat.policy", f"expected {kind}:<name>+<name>", value=name)
    raise ConfigError("remat.policy", "unknown remat policy", value=name, choices=choices())


def _resolve(policy: str | RematPolicy) -> RematPolicy:
    return policy if isinstance(policy, RematPolicy) else get(policy)


def _is_node(x: Any) -> bool:
    """NNX graph nodes (modules, variables) travel through ``nnx.remat`` whole."""
    return isinstance(x, (nnx.Module, nnx.Variable))


def _is_traced(x: Any) -> bool:
    """What becomes an input of the checkpointed function: arrays and NNX graph nodes. Any
    other argument (a flag, a size, None) stays a Python value, as without remat."""
    return _is_node(x) or isinstance(x, (jax.Array, np.ndarray, np.generic))


def _checkpointed(fn: Callable[..., Any], policy: RematPolicy,
                  prevent_cse: bool) -> Callable[..., Any]:
    """``fn`` under ``nnx.remat``, callable with positional and keyword arguments alike.

    ``nnx.remat`` (like ``jax.checkpoint`` with static arguments) cannot take keyword
    arguments, and would trace Python flags into arrays; so the arguments are flattened, the
    arrays and graph nodes passed positionally, and everything else closed over.
    """
    if not policy.checkpoint:
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        leaves, tree = jax.tree.flatten((args, kwargs), is_leaf=_is_node)
        traced = [i for i, x in enumerate(leaves) if _is_traced(x)]

        def inner(*values: Any) -> Any:
            merged = list(leaves)
            for i, v in zip(traced, values, strict=True):
                merged[i] = v
            a, k = jax.tree.unflatten(tree, merged)
            return fn(*a, **k)

        inner_remat = nnx.remat(inner, policy=policy.policy, prevent_cse=prevent_cse)
        return inner_remat(*(leaves[i] for i in traced))

    return call


class _Checkpointed(nnx.Module):
    """An NNX module whose calls are checkpointed (what :func:`apply` returns for a module)."""

    def __init__(self, module: nnx.Module, policy: RematPolicy, prevent_cse: bool):
        self.module = module
        self.policy = policy
        self.prevent_cse = prevent_cse

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = _checkpointed(lambda m, *a, **k: m(*a, **k), self.policy, self.prevent_cse)
        return call(self.module, *args, **kwargs)


def apply(module_or_fn: nnx.Module | Callable[..., Any], policy: str | RematPolicy, *,
          prevent_cse: bool = True) -> Any:
    """Your own NNX module or function, checkpointed under ``policy`` (a name or a policy).

    A module comes back wrapped (use it where the module was; its parameters are the same, one
    level down under ``module``); a function comes back wrapped. Either is called as before,
    with positional and keyword arguments; NNX modules among the arguments are handled by
    ``nnx.remat``, arrays become the checkpoint's inputs, other values stay Python values.
    Policy ``none`` returns the module or function unchanged. Inside ``jax.lax.scan`` pass
    ``prevent_cse=False``: the loop already keeps XLA from merging the recomputation.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxmem import remat
      >>> layer = remat.apply(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), "minimal")
      >>> layer(jnp.ones((2, 4))).shape
      (2, 4)
      >>> f = remat.apply(lambda x, *, scale: jnp.sin(x) * scale, "full")
      >>> float(f(jnp.float32(0.0), scale=2.0))
      0.0
    """
    p = _resolve(policy)
    if isinstance(module_or_fn, nnx.Module):
        return module_or_fn if not p.checkpoint else _Checkpointed(module_or_fn, p, prevent_cse)
    return _checkpointed(module_or_fn, p, prevent_cse)
