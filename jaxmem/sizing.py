"""The bytes of a value on one device, as a backend lays it out: :class:`Sizer`.

A value's shard under the mesh and the sharding rules, its dtype role (``compute``, ``param``)
resolved, padded the way the backend tiles it (XLA:TPU: two minor dimensions in tiles of
sublanes by 128 lanes). Used by the memory estimate (``jaxmem.estimate``).

Example:
  >>> import types
  >>> import numpy as np
  >>> from jaxmem import sharding
  >>> from jaxmem.backends import BACKENDS
  >>> from jaxmem.sizing import Sizer
  >>> mesh = types.SimpleNamespace(shape={"data": 8})
  >>> tpu = Sizer(mesh, sharding.Rules(axes=()), np.dtype("bfloat16"), np.dtype("float32"),
  ...             BACKENDS["tpu"])
  >>> tpu.nbytes((3, 100), np.dtype("float32"))  # padded to 8 sublanes x 128 lanes
  4096
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmem import sharding
from jaxmem.backends import Backend
from jaxmem.models.anatomy import COMPUTE, PARAM, ROUNDED, Tensor

#: XLA:TPU lays arrays out in tiles over their two minor dimensions: (sublanes, 128 lanes),
#: 8 sublanes for 32-bit values, 16 for 16-bit, 32 for 8-bit.
_TPU_LANES = 128


def _tpu_padded(shape: Sequence[int], itemsize: int) -> int:
    """Elements of ``shape`` laid out in TPU tiles: the layout XLA picks is assumed to be the
    one that pads least (any dimension minor, padded to 128 lanes; another second-minor,
    padded to the sublanes). Checked against libtpu's argument bytes."""
    if not shape:
        return 1
    if len(shape) == 1:
        return -(-shape[0] // _TPU_LANES) * _TPU_LANES
    sublanes = 8 * max(1, 4 // itemsize)
    total = math.prod(shape)
    best = None
    for i, j in itertools.permutations(range(len(shape)), 2):
        lanes = -(-shape[i] // _TPU_LANES) * _TPU_LANES
        rows = -(-shape[j] // sublanes) * sublanes
        size = total // (shape[i] * shape[j]) * lanes * rows
        best = size if best is None else min(best, size)
    return best


def _sublane_padded(shape: Sequence[int], itemsize: int) -> int:
    """Elements of ``shape`` with its last dimension padded to the sublanes."""
    sublanes = 8 * max(1, 4 // itemsize)
    return math.prod(shape[:-1]) * (-(-shape[-1] // sublanes) * sublanes)


@dataclasses.dataclass(frozen=True)
class Sizer:
    """Bytes of a value on one device: its shard's shape under the mesh and rules, its dtype
    role resolved, padded the way the backend lays it out."""

    mesh: Any  # anything with ``.shape``: axis -> size
    rules: sharding.Rules
    compute: np.dtype
    param: np.dtype
    backend: Backend
    rounded: np.dtype | None = None  # the configured compute dtype (None: ``compute``)

    def dtype(self, role: str) -> np.dtype:
        return {COMPUTE: self.compute, PARAM: self.param,
                ROUNDED: self.compute if self.rounded is None else self.rounded
                }.get(role) or np.dtype(role)

    def shard(self, shape: Sequence[int], axes: Sequence[str | None]) -> tuple[int, ...]:
        dims = sharding.mesh_axes_by_dim(tuple(axes), shape, self.mesh, self.rules)
        return tuple(s // math.prod(self.mesh.shape[a] for a in d) for s, d in zip(
            shape, dims, strict=True))

    def nbytes(self, shape: Sequence[int], dtype: np.dtype, minor: bool = False) -> int:
        if self.backend.tiles and 0 not in shape:
            if minor and len(shape) > 1:  # the last dimension on the lanes
                lanes = -(-shape[-1] // _TPU_LANES) * _TPU_LANES
                return lanes * _sublane_padded(shape[:-1], dtype.itemsize) * dtype.itemsize
            return _tpu_padded(shape, dtype.itemsize) * dtype.itemsize
        return math.prod(shape) * dtype.itemsize

    def tensor(self, t: Tensor) -> int:
        return self.nbytes(self.shard(t.shape, t.axes), self.dtype(t.dtype), t.channels_minor)

    def tensors(self, ts: Sequence[Tensor]) -> int:
        return sum(self.tensor(t) for t in ts)


def param_spec(path: str, shape: Sequence[int], setup: Any, mesh: Any) -> tuple[Any, ...]:
    """A parameter's PartitionSpec under the setup's rules (a :class:`~jaxmem.setup.Setup`),
    one entry per dimension."""
    axes = sharding.lookup_axes(path, len(shape), setup.param_axes, {})
    spec = tuple(sharding.param_spec(axes, shape, mesh, setup.rules))
    return (*spec, *(None,) * (len(shape) - len(spec)))


def local_shape(shape: Sequence[int], spec: Sequence[Any], mesh: Any) -> tuple[int, ...]:
    """A parameter's shape on one device: each dimension divided by the mesh axes its
    PartitionSpec entry names."""
    return tuple(s // math.prod(mesh.shape[a] for a in spec_axes(e))
                 for s, e in zip(shape, spec, strict=True))


def zero_joined(shape: Sequence[int], spec: Sequence[Any], mesh: Any,
                zero: Any) -> tuple[int, ...]:
    """A parameter's shape on one device with its ZeRO shards joined: each dimension divided
    by the mesh axes its PartitionSpec entry names but those in ``zero`` (split over the tensor
    axis still).

    Example:
      >>> from types import SimpleNamespace
      >>> mesh = SimpleNamespace(shape={"fsdp": 2, "tensor": 4})
      >>> zero_joined((1024, 4096), ("fsdp", "tensor"), mesh, {"fsdp"})
      (1024, 1024)
    """
    return tuple(s // math.prod(mesh.shape[a] for a in spec_axes(e) if a not in zero)
                 for s, e in zip(shape, spec, strict=True))


def zero_split(spec: Sequence[Any], zero: Any) -> bool:
    """Whether a PartitionSpec splits its parameter over any of the ``zero`` mesh axes.

    Example:
      >>> zero_split((("fsdp", "data"), None), {"fsdp"}), zero_split(("tensor",), {"fsdp"})
      (True, False)
    """
    return any(a in zero for e in spec for a in spec_axes(e))


def spec_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (none, one name or several)."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)
