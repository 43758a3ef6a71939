"""Compile-only ("virtual") NVIDIA GPU devices from the jax CUDA plugin, on a machine without GPUs.

``gpu_devices("h100", "1x1x8")`` returns 8 devices of kind ``NVIDIA H100 80GB HBM3`` that a
sharded ``jax.jit(...).lower(...).compile()`` can target (``memory_analysis()`` works; nothing
runs). The device facts XLA plans with come from ``jaxmem/gpu_configs/<kind>.txtpb``
(``GpuTargetConfigProto`` text); topologies are ``<partitions>x<hosts per partition>x<devices
per host>``: ``1x1x8`` is one 8-GPU node, ``2x1x8`` and ``1x2x8`` are two (16 devices).

Platform settings, as found with jax, jaxlib and jax-cuda12-plugin 0.10.2 on a machine with no
GPU and no CUDA driver:

* ``JAX_PLATFORMS=cpu`` (jaxmem's default, and the tests'): works with nothing else set; the
  CPU stays the default backend. The plugin skips its CUDA version check when the requested
  platforms exclude cuda, registers itself anyway, and its topology factory needs no device.
* ``JAX_PLATFORMS`` unset, ``cpu,cuda`` or ``cuda``: the version check's ``cuInit`` fails
  ("Jax plugin configuration error", ``operation cuInit(0) failed: Unknown CUDA error 303``),
  the plugin is not registered and ``get_topology_desc`` raises ``NotImplementedError: topology
  not implemented for cuda``. ``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`` avoids that if set before
  JAX discovers its plugins (once per process: first backend or topology call); :func:`gpu_devices`
  sets it during its call when unset, which helps when it comes first, and otherwise raises
  ConfigError saying what to set. ``cpu,cuda`` then keeps the CPU the default backend (the cuda
  backend fails to start and is dropped silently).
* ``target_config`` and ``topology`` are both required. A config without ``threads_per_warp``
  or ``block_dim_limit_x``, or an empty one, kills the process (SIGFPE); it is refused first.

Example:
  >>> GPU_KINDS["h100"].memory_bytes // 2**20
  81041
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path

import jax

from jaxmem.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "gpu_configs"
TOPOLOGY = re.compile(r"^[1-9]\d*x[1-9]\d*x[1-9]\d*$")
_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")
# Fields whose absence crashes the plugin (SIGFPE) or fails every compile.
_REQUIRED = ("threads_per_warp", "block_dim_limit_x", "shared_memory_per_block",
             "shared_memory_per_block_optin", "core_count", "device_memory_size")
_INSTALL = "pip install 'jaxmem[gpu-targets]'"
_SKIP = "JAX_SKIP_CUDA_CONSTRAINTS_CHECK"


def config_fields(text: str) -> dict[str, int]:
    """The integer ``name: value`` fields of a GpuTargetConfigProto text (nesting ignored)."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s*(\w+):\s*(\d+)\s*$", text, re.M)}


@dataclasses.dataclass(frozen=True)
class GpuKind:
    """A GPU model that compile-only devices can be made of.

    Attributes:
      name: the key in :data:`GPU_KINDS` (``h100``).
      description: one line for listings.
      memory_bytes: device memory, read from the target config file's ``device_memory_size``.
      config_file: the GpuTargetConfigProto text file.
    """

    name: str
    description: str
    memory_bytes: int
    config_file: Path

    @classmethod
    def from_config_file(cls, name: str, description: str) -> GpuKind:
        """The kind whose facts are in ``gpu_configs/<name>.txtpb``."""
        path = CONFIG_DIR / f"{name}.txtpb"
        memory = config_fields(path.read_text(encoding="utf-8"))["device_memory_size"]
        return cls(name, description, memory, path)


GPU_KINDS: dict[str, GpuKind] = {k.name: k for k in (
    GpuKind.from_config_file("a100-40", "NVIDIA A100 SXM4 40GB (Ampere, sm_80)"),
    GpuKind.from_config_file("a100-80", "NVIDIA A100 SXM4 80GB (Ampere, sm_80)"),
    GpuKind.from_config_file("h100", "NVIDIA H100 SXM5 80GB HBM3 (Hopper, sm_90)"),
    GpuKind.from_config_file("h200", "NVIDIA H200 SXM 141GB HBM3e (Hopper, sm_90)"),
    GpuKind.from_config_file("b200", "NVIDIA B200 180GB HBM3e (Blackwell, sm_100)"),
)}


def plugin_available() -> bool:
    """Whether a jax CUDA plugin is installed (found without importing it)."""
    try:
        return any(importlib.util.find_spec(name) is not None for name in _PLUGINS)
    except ModuleNotFoundError:  # no jax_plugins namespace at all
        return False


@contextlib.contextmanager
def _skip_cuda_check() -> Iterator[None]:
    added = _SKIP not in os.environ
    os.environ.setdefault(_SKIP, "1")
    try:
        yield
    finally:
        if added:
            os.environ.pop(_SKIP, None)


@functools.cache
def gpu_devices(kind: str, topology: str = "1x1x8") -> tuple[jax.Device, ...]:
    """Compile-only devices: ``topology`` (``<partitions>x<hosts>x<devices per host>``) of ``kind``.

    Args:
      kind: a key of :data:`GPU_KINDS`.
      topology: e.g. ``1x1x8`` (one node of 8 GPUs) or ``2x1x8`` (two nodes, 16 devices).

    Returns:
      The devices, in id order (platform ``gpu``, device_kind as the target config names it).

    Raises:
      ConfigError: (path ``target.name``) unknown kind, malformed or rejected topology, no CUDA
        plugin installed, or a plugin that cannot make topologies in this process.
    """
    value = f"gpu:{kind}:{topology}"
    if kind not in GPU_KINDS:
        raise ConfigError("target.name", "unknown GPU kind", value=value,
                          choices=sorted(GPU_KINDS))
    if not TOPOLOGY.match(topology):
        raise ConfigError("target.name", "topology must be <partitions>x<hosts per partition>x"
                          "<devices per host>, each >= 1 (e.g. 1x1x8)", value=value)
    if not plugin_available():
        raise ConfigError("target.name", f"needs the jax CUDA plugin: {_INSTALL}", value=value)
    text = GPU_KINDS[kind].config_file.read_text(encoding="utf-8")
    missing = [f for f in _REQUIRED if config_fields(text).get(f, 0) <= 0]
    if missing:
        raise ConfigError("target.name", f"target config file lacks {', '.join(missing)}",
                          value=value)
    from jax.experimental import topologies

    try:
        with _skip_cuda_check():
            topo = topologies.get_topology_desc(kind, "cuda", target_config=text,
                                                topology=topology)
    except NotImplementedError:  # the plugin did not register in this process
        raise ConfigError(
            "target.name", "the CUDA plugin is installed but not registered in this process: "
            f"set JAX_PLATFORMS=cpu (or {_SKIP}=1) before JAX starts on a machine without a GPU",
            value=value) from None
    except Exception as e:  # the plugin rejects the topology or the config
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError("target.name", f"the CUDA plugin rejected the topology ({msg})",
                          value=value) from None
    return tuple(sorted(topo.devices, key=lambda d: d.id))
