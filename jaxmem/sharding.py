"""Device meshes and the placement of the training state and batch on them.

The mesh has one named axis per parallelism kind; here ``data`` (data parallelism: the batch is
split along it, parameters and optimizer state are replicated).

Example:
  >>> import jax
  >>> from jaxmem import sharding
  >>> from jaxmem.config import MeshConfig
  >>> mesh = sharding.make_mesh(MeshConfig(data=1), jax.devices())
  >>> dict(mesh.shape)
  {'data': 1}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmem.config import MeshConfig
from jaxmem.errors import ConfigError, Unsupported

BATCH_AXES = ("data",)


def axis_sizes(config: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis name -> size with ``-1`` resolved to the devices left over."""
    sizes = config.axes()
    fixed = math.prod(s for s in sizes.values() if s != -1)
    free = [name for name, s in sizes.items() if s == -1]
    if fixed > num_devices or (free and num_devices % fixed):
        raise ConfigError("mesh", f"needs {fixed} devices but the target has {num_devices}",
                          value=sizes)
    for name in free:
        sizes[name] = num_devices // fixed
    return sizes


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device]) -> Mesh:
    """A mesh over the first ``prod(sizes)`` devices (all of them when an axis is -1)."""
    sizes = axis_sizes(config, len(devices))
    n = math.prod(sizes.values())
    grid = np.asarray(list(devices)[:n], dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, tuple(sizes))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """Raises ConfigError unless the batch splits evenly over the mesh's batch axes."""
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % ways:
        raise ConfigError("data.batch_size", f"must be divisible by the {ways} devices of the "
                          "mesh's data axis", value=batch_size)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds a full copy."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the batch axes, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def place(tree: Any, sharding: NamedSharding) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``sharding`` (for abstract compiles)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def constrain_batch(mesh: Mesh):
    """A function constraining a batch pytree to be split over the batch axes (for
    microbatches inside the step)."""
    spec = batch_sharding(mesh)

    def constrain(tree: Any) -> Any:
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), tree)

    return constrain


def require_host_memory(mesh: Mesh, what: str) -> None:
    """Raises Unsupported unless the mesh's devices have a ``pinned_host`` memory kind."""
    device = mesh.devices.flat[0]
    try:
        kinds = sorted(m.kind for m in device.addressable_memories())
    except Exception:  # compile-only devices may not list their memories
        kinds = []
    if "pinned_host" not in kinds:
        raise Unsupported(f"{what} is not supported on {device.platform} ({device.device_kind}):"
                          f" memory kinds {kinds or 'not reported'}")


def host_memory(mesh: Mesh, like: NamedSharding) -> NamedSharding:
    """``like`` in pinned host memory.

    Raises:
      Unsupported: the devices have no ``pinned_host`` memory kind.
    """
    require_host_memory(mesh, "optimizer-state offload")
    return like.with_memory_kind("pinned_host")
