"""Freezing parameter groups: no gradient and no optimizer state for them.

Parameters are chosen by glob patterns over their paths (``trunk/blocks/blocks/0/*``); the
optimizer becomes ``optax.multi_transform`` with ``optax.set_to_zero`` for the frozen group,
which keeps no state, and the loss sees frozen parameters through ``stop_gradient`` so that
their weight gradients are not computed at all.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxmem import freeze
  >>> params = {"embed": {"w": jnp.ones(4)}, "head": {"w": jnp.ones(2)}}
  >>> freeze.frozen_mask(params, ["embed/*"])
  {'embed': {'w': True}, 'head': {'w': False}}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import jax
import optax

from jaxmem.errors import ConfigError


def _key(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_of(path: tuple[Any, ...]) -> str:
    """``trunk/blocks/blocks/0/attn/query/kernel`` from a pytree key path (Variable's
    trailing ``value`` dropped)."""
    parts = [_key(k) for k in path]
    if parts and parts[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        parts = parts[:-1]
    return "/".join(parts)


def param_paths(params: Any) -> list[str]:
    """Every parameter's path, in tree order."""
    return [path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A tree like ``params`` with True where a parameter's path matches a pattern.

    Raises:
      ConfigError: a pattern matches no parameter.
    """
    paths = param_paths(params)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(p, pattern) for p in paths):
            example = paths[len(paths) // 2] if paths else "(no parameters)"
            raise ConfigError("freeze.patterns", f"matches no parameter (paths look like "
                              f"{example})", value=pattern)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: any(fnmatch.fnmatchcase(path_of(p), pat) for pat in patterns), params)


def stop_frozen(params: Any, mask: Any) -> Any:
    """Frozen parameters behind ``stop_gradient``: autodiff skips their gradients."""
    return jax.tree.map(lambda p, m: jax.lax.stop_gradient(p) if m else p, params, mask)


def freeze_tx(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
    """``tx`` for the trainable parameters, zero updates and no state for the frozen ones."""
    labels = jax.tree.map(lambda m: "frozen" if m else "train", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
