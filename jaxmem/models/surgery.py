"""Replacing sub-modules of a built NNX model (for quantisation and pruning).

Example:
  >>> from flax import nnx
  >>> from jaxmem.models.surgery import replace_modules
  >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu)
  >>> replace_modules(model, nnx.Linear, lambda m, path: nnx.Linear(2, 5, rngs=nnx.Rngs(1)))
  1
  >>> model.layers[0].out_features
  5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx


def _child(node: Any, key: Any) -> Any:
    return node[key] if isinstance(key, int) else getattr(node, key)


def _set_child(node: Any, key: Any, value: Any) -> None:
    if isinstance(key, int):
        node[key] = value
    else:
        setattr(node, key, value)


def replace_modules(model: nnx.Module, kind: type | tuple[type, ...],
                    make: Callable[[nnx.Module, tuple[Any, ...]], nnx.Module]) -> int:
    """Replaces, in place, every sub-module of type ``kind`` by ``make(module, path)``.

    Returns the number of modules replaced.
    """
    targets = [(path, node) for path, node in nnx.iter_graph(model)
               if path and isinstance(node, kind)]
    for path, node in targets:
        parent = model
        for key in path[:-1]:
            parent = _child(parent, key)
        _set_child(parent, path[-1], make(node, path))
    return len(targets)
