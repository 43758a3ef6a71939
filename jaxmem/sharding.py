"""Device meshes, sharding rules, and where parameters, optimizer state and activations live.

A mesh has three named axes (size 1 where unused):

* ``data``: the batch is split over it; parameters and optimizer state are replicated.
* ``fsdp``: the batch is split over it too, and every parameter, its gradient and its optimizer
  state are split over it (ZeRO-3 / FSDP); XLA gathers each weight where it is used.
* ``tensor``: Megatron-style: attention heads, MLP width and vocabulary are split, so the
  column-parallel and row-parallel matmuls of a block need one all-reduce each.

Model code names the axes of parameters and activations with *logical* names (``batch``,
``length``, ``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ``norm``, ``layers``); a
:class:`Rules` maps logical names to mesh axes. :func:`param_spec` is the one function that
turns a parameter's logical axes into a ``PartitionSpec``.

Example:
  >>> import jax
  >>> from jaxmem import sharding
  >>> from jaxmem.config import MeshConfig
  >>> mesh = sharding.make_mesh(MeshConfig(fsdp=2, tensor=4), jax.devices()[:8])
  >>> rules = sharding.preset_rules("fsdp+tp")
  >>> tuple(sharding.param_spec(("embed", "mlp"), (512, 2048), mesh, rules))  # MLP up
  ('fsdp', 'tensor')
  >>> tuple(sharding.param_spec(("mlp", "embed"), (2048, 512), mesh, rules))  # MLP down
  ('tensor', 'fsdp')
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmem.errors import ConfigError, Unsupported
from jaxmem.freeze import path_of

if TYPE_CHECKING:
    from jaxmem.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "norm", "layers")

Axes = tuple[str | None, ...]


# ---------------------------------------------------------------------------------- meshes

def axis_sizes(config: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis name -> size, ``-1`` resolved to the devices left over.

    The sizes must multiply to ``num_devices``, except a one-device mesh (the default), which
    measures one device of the target.

    Raises:
      ConfigError: the sizes do not fit the device count.
    """
    sizes = config.axes()
    fixed = math.prod(s for s in sizes.values() if s != -1)
    free = [name for name, s in sizes.items() if s == -1]
    shape = " ".join(f"{n}={s}" for n, s in sizes.items())
    if free:
        if num_devices % fixed:
            raise ConfigError("mesh", f"{shape}: the fixed axes ({fixed} devices) do not divide "
                              f"the target's {num_devices} devices", value=sizes)
        sizes[free[0]] = num_devices // fixed
    elif fixed not in (1, num_devices):
        raise ConfigError("mesh", f"{shape} spans {fixed} devices but the target has "
                          f"{num_devices}; make the sizes multiply to {num_devices}, or set one "
                          "axis to -1 (the rest)", value=sizes)
    return sizes


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device]) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices``.

    On TPUs the devices are laid out by their physical coordinates
    (``jax.experimental.mesh_utils``), so that the inner axes ride on the fastest links.

    Raises:
      ConfigError: the sizes do not fit the devices, or the topology cannot hold the shape.
    """
    sizes = axis_sizes(config, len(devices))
    n = math.prod(sizes.values())
    shape = tuple(sizes.values())
    devices = list(devices)[:n]
    if n > 1 and devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        try:
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError) as e:
            raise ConfigError("mesh", f"the {devices[0].device_kind} topology cannot hold mesh "
                              f"shape {shape} ({str(e).splitlines()[0]})", value=sizes) from None
    else:
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, tuple(sizes))


def batch_ways(mesh: Mesh) -> int:
    """Over how many devices the batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """Raises ConfigError unless the batch splits evenly over the mesh's batch axes."""
    ways = batch_ways(mesh)
    if batch_size % ways:
        raise ConfigError("data.batch_size", f"must be divisible by the {ways} devices of the "
                          "mesh's batch axes (data x fsdp)", value=batch_size)


# ----------------------------------------------------------------------------------- rules

@dataclasses.dataclass(frozen=True)
class Rules:
    """How logical axes map to mesh axes.

    Attributes:
      axes: ``(logical name, mesh axes)`` pairs; a dimension takes the mesh axes of its
        logical name that are not already used by an earlier dimension of the same array.
      zero: mesh axes that additionally split every parameter and its optimizer state on its
        largest dimension still unsplit (ZeRO-3 / FSDP), whatever its logical name.
      activations: whether models' activations are constrained to their logical axes'
        sharding (:func:`constrain`); False leaves their layout to XLA's propagation.
    """

    axes: tuple[tuple[str, tuple[str, ...]], ...]
    zero: tuple[str, ...] = ()
    activations: bool = True

    def __post_init__(self) -> None:
        for name, mesh_axes in self.axes:
            for a in mesh_axes:
                if a not in MESH_AXES:
                    raise ConfigError("sharding.rules", f"maps {name!r} to an unknown mesh axis",
                                      value=a, choices=MESH_AXES)
        for a in self.zero:
            if a not in MESH_AXES:
                raise ConfigError("sharding.zero", "unknown mesh axis", value=a,
                                  choices=MESH_AXES)

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        """Mesh axes of a logical name (empty: not split)."""
        return dict(self.axes).get(logical, ()) if logical else ()

    def override(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> Rules:
        """These rules with ``pairs`` replacing (or adding) logical names' mesh axes."""
        table = dict(self.axes)
        table.update({name: tuple(axes) for name, axes in pairs})
        return Rules(tuple(table.items()), self.zero)


_TP = (("heads", ("tensor",)), ("mlp", ("tensor",)), ("vocab", ("tensor",)))
_BATCH = (("batch", BATCH_AXES),)

#: Named rule sets: ``dp`` (replicate), ``fsdp`` (ZeRO-3), ``tp`` (Megatron), ``fsdp+tp``.
PRESETS: dict[str, Rules] = {
    "dp": Rules(_BATCH),
    "fsdp": Rules(_BATCH, zero=("fsdp",)),
    "tp": Rules(_BATCH + _TP),
    "fsdp+tp": Rules(_BATCH + _TP, zero=("fsdp",)),
}


def preset_rules(preset: str = "dp", overrides: Sequence[tuple[str, Sequence[str]]] = ()) -> Rules:
    """A preset's rules, with ``(logical name, mesh axes)`` overrides.

    Example:
      >>> from jaxmem import sharding
      >>> sharding.preset_rules("tp").mesh_axes("mlp")
      ('tensor',)
    """
    if preset not in PRESETS:
        raise ConfigError("sharding.preset", "unknown sharding preset", value=preset,
                          choices=sorted(PRESETS))
    return PRESETS[preset].override(overrides)


def _entry(axes: Sequence[str]) -> str | tuple[str, ...] | None:
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def _fitting(axes: Sequence[str], size: int, mesh: Mesh, used: set[str]) -> list[str]:
    """The longest prefix of ``axes`` (unused, present, > 1) whose sizes divide ``size``."""
    out = [a for a in axes if a not in used and mesh.shape.get(a, 1) > 1]
    while out and size % math.prod(mesh.shape[a] for a in out):
        out.pop()
    return out


def mesh_axes_by_dim(logical: Axes, shape: Sequence[int], mesh: Mesh, rules: Rules
                 ) -> list[list[str]]:
    """Mesh axes per dimension from logical names (dimensions that do not divide stay whole)."""
    used: set[str] = set()
    out = []
    for name, size in zip(logical, shape, strict=True):
        axes = _fitting(rules.mesh_axes(name), size, mesh, used)
        used.update(axes)
        out.append(axes)
    return out


def param_spec(logical: Axes | None, shape: Sequence[int], mesh: Mesh, rules: Rules
               ) -> PartitionSpec:
    """A parameter's PartitionSpec: its logical axes through ``rules``, then the ZeRO axes on
    the largest dimension left whole (never the ``layers`` axis of a scanned stack)."""
    logical = logical or (None,) * len(shape)
    dims = mesh_axes_by_dim(logical, shape, mesh, rules)
    used = {a for axes in dims for a in axes}
    zero = [a for a in rules.zero if a not in used and mesh.shape.get(a, 1) > 1]
    if zero:
        ways = math.prod(mesh.shape[a] for a in zero)
        free = [i for i, (name, size) in enumerate(zip(logical, shape, strict=True))
                if not dims[i] and name != "layers" and size % ways == 0]
        if free:
            dims[max(free, key=lambda i: shape[i])] = zero
    return PartitionSpec(*(_entry(a) for a in dims))


def activation_spec(logical: Axes, shape: Sequence[int], mesh: Mesh, rules: Rules
                    ) -> PartitionSpec:
    """An activation's PartitionSpec (no ZeRO axes: activations are split by the batch)."""
    return PartitionSpec(*(_entry(a) for a in mesh_axes_by_dim(logical, shape, mesh, rules)))


# -------------------------------------------------------------- parameters to shardings

def _variables(state: Any) -> list[tuple[str, Any]]:
    from flax import nnx

    leaves = jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [(path_of(p), v) for p, v in leaves if isinstance(v, nnx.Variable)]


def metadata_axes(state: Any) -> dict[str, Axes]:
    """Logical axes that variables carry themselves (``nnx.with_partitioning`` metadata)."""
    out = {}
    for path, var in _variables(state):
        meta = var.get_metadata()
        axes = meta.get("out_sharding", meta.get("sharding_names"))
        if axes:
            out[path] = tuple(axes)
    return out


def lookup_axes(path: str, ndim: int, table: Sequence[tuple[str, Axes]],
                metadata: Mapping[str, Axes]) -> Axes | None:
    """A parameter's logical axes: the first ``table`` pattern matching its path, else its own
    metadata, else None. A scanned stack's leading layer axis is added when missing."""
    axes = next((a for pattern, a in table if fnmatch.fnmatchcase(path, pattern)),
                metadata.get(path))
    if axes is None:
        return None
    axes = tuple(axes)
    if len(axes) == ndim - 1:
        axes = ("layers", *axes)
    if len(axes) != ndim:
        raise ConfigError("sharding.param_axes", f"names {len(axes)} axes for {path}, which "
                          f"has {ndim}", value=list(axes))
    return axes


def param_shardings(params: Any, mesh: Mesh, rules: Rules,
                table: Sequence[tuple[str, Axes]] = (),
                metadata: Mapping[str, Axes] | None = None) -> Any:
    """A tree like ``params`` with each leaf's NamedSharding.

    Args:
      params: arrays or ShapeDtypeStructs (an ``nnx.State`` or any pytree).
      table: ``(glob over the parameter path, logical axes)`` pairs, first match wins.
      metadata: logical axes the variables carry (:func:`metadata_axes`).
    """
    metadata = metadata or {}

    def one(path: Any, x: Any) -> NamedSharding:
        p = path_of(path)
        spec = param_spec(lookup_axes(p, len(x.shape), table, metadata), x.shape, mesh, rules)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, params)


def state_shardings(state: Any, params: Any, param_shardings: Any, mesh: Mesh,
                    rules: Rules) -> Any:
    """Shardings of optimizer state: a leaf shaped like the parameter whose path ends its own
    path (Adam's ``mu``/``nu``, momentum) shares that parameter's sharding; any other leaf
    (factored second moments) is split by the ZeRO axes alone; scalars are replicated."""
    by_path = {path_of(p): (x.shape, s) for (p, x), s in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings),
        strict=True)}

    def one(path: Any, x: Any) -> NamedSharding:
        parts = path_of(path).split("/")
        for i in range(len(parts)):
            found = by_path.get("/".join(parts[i:]))
            if found and found[0] == x.shape:
                return found[1]
        return NamedSharding(mesh, param_spec(None, x.shape, mesh, rules))

    return jax.tree_util.tree_map_with_path(one, state)


def shard(model: Any, mesh: Mesh, rules: Rules, table: Sequence[tuple[str, Axes]] = ()) -> Any:
    """Places a real NNX model's parameters on ``mesh`` by ``rules`` (in place); returns it.

    Logical axes come from ``table`` patterns or the variables' own ``nnx.with_partitioning``
    metadata; parameters with neither are split by the ZeRO axes alone.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from jaxmem import sharding
      >>> from jaxmem.config import MeshConfig
      >>> mesh = sharding.make_mesh(MeshConfig(fsdp=-1), jax.devices())
      >>> model = sharding.shard(nnx.Linear(16, 64, rngs=nnx.Rngs(0)), mesh,
      ...                        sharding.preset_rules("fsdp"))
      >>> tuple(model.kernel[...].sharding.spec)  # 16 x 64: the larger dimension is split
      (None, 'fsdp')
    """
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    shardings = param_shardings(state, mesh, rules, table, metadata_axes(state))
    nnx.update(model, jax.device_put(state, shardings))
    return model


# ------------------------------------------------------------------------ activations

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "jaxmem_sharding_rules", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """While tracing inside this context, :func:`constrain` pins activations to ``mesh``."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, logical: Axes) -> jax.Array:
    """``x`` constrained to the sharding its logical axes get under the active rules; ``x``
    unchanged outside :func:`use_rules` (models stay usable without a mesh) or under rules
    with ``activations=False``."""
    active = _ACTIVE.get()
    if active is None or not active[1].activations:
        return x
    mesh, r = active
    spec = activation_spec(logical, x.shape, mesh, r)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def with_rules(fn: Any, mesh: Mesh, rules: Rules) -> Any:
    """``fn`` traced under :func:`use_rules` (wrap a step before ``jax.jit``)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with use_rules(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


# -------------------------------------------------------------------------- placement

def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds a full copy."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the batch axes, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def place(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (one, or a tree like ``tree``)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings),
                            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def constrain_batch(mesh: Mesh):
    """A function constraining a batch pytree to be split over the batch axes (for
    microbatches inside the step)."""
    split = batch_sharding(mesh)

    def constrain_tree(tree: Any) -> Any:
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, split), tree)

    return constrain_tree


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


def host_memory(mesh: Mesh, like: Any) -> Any:
    """``like`` (a sharding, or a tree of them) in pinned host memory.

    Raises:
      Unsupported: the devices have no ``pinned_host`` memory kind.
    """
    require_host_memory(mesh, "optimizer-state offload")
    return jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), like)
