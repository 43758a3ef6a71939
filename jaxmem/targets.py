"""Where a configuration is compiled and run: a named set of devices, and its memory.

* ``local``: the devices of the backend JAX attaches to in this process (CPU, GPU or TPU).
* ``cpu:N``: N CPU devices of this process (fake devices for sharding on one machine; the CLI
  creates them, elsewhere set ``jax_num_cpu_devices`` before JAX starts).
* ``tpu:<version>:<topology>``, e.g. ``tpu:v5e:16x16`` or ``tpu:v5p:4x4x4``: compile-only
  TPU devices from libtpu's deviceless topologies (``pip install 'jaxmem[tpu-targets]'``).
* ``gpu:<kind>x<N>[:<nodes>]``, e.g. ``gpu:h100x8`` or ``gpu:h100x8:2``: compile-only NVIDIA
  GPUs through the jax CUDA plugin and a GPU target config shipped with jaxmem
  (``pip install 'jaxmem[gpu-targets]'``; ``jaxmem._gpu``).

Compile-only targets cannot ``run``. Each target knows its per-device memory, so every row can
say whether the configuration fits.

Example:
  >>> from jaxmem import targets
  >>> len(targets.get("local").devices()) >= 1
  True
  >>> targets.get("tpu:v5e:16x16").memory_bytes / 2**30
  16.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from jaxmem.errors import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """A named set of devices to compile for.

    Attributes:
      name: as written in ``target.name``.
      doc: one line for listings.
      devices: returns the target's devices (real or compile-only).
      runnable: False for compile-only (virtual) devices: ``run`` mode is refused.
      memory: returns the memory of one device (None: unknown, e.g. CPU host memory) and
        where that figure comes from.
    """

    name: str
    doc: str
    devices: Callable[[], list[jax.Device]]
    runnable: bool = True
    memory: Callable[[], tuple[int | None, str]] = lambda: (None, "unknown")

    @property
    def memory_bytes(self) -> int | None:
        """Memory of one device, or None."""
        return self.memory()[0]


@dataclasses.dataclass(frozen=True)
class Family:
    """A kind of target name: its pattern, how to build one, and a line for ``jaxmem targets``."""

    pattern: re.Pattern[str]
    syntax: str
    doc: str
    build: Callable[[re.Match[str]], Target]


# ------------------------------------------------------------------------------- local

def _local_memory() -> tuple[int | None, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), "memory_stats()['bytes_limit'] of the attached device"
    return None, "not reported by the backend"


def _local(_: re.Match[str]) -> Target:
    return Target("local", "the devices of the backend JAX attaches to here", jax.devices,
                  memory=_local_memory)


# --------------------------------------------------------------------------------- cpu

def cpu_devices(n: int) -> list[jax.Device]:
    """The first ``n`` CPU devices of this process.

    Raises:
      ConfigError: fewer exist (they are fixed when JAX starts).
    """
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ConfigError("target.name", f"needs {n} CPU devices but this process has "
                          f"{len(devices)}; they are fixed when JAX starts: run through the "
                          "jaxmem CLI (it creates them), or call "
                          f"jax.config.update('jax_num_cpu_devices', {n}) right after "
                          "importing jax", value=f"cpu:{n}")
    return devices[:n]


def _cpu(m: re.Match[str]) -> Target:
    n = int(m["n"])
    if n < 1:
        raise ConfigError("name", "needs at least one device", value=m.string)
    return Target(m.string, f"{n} CPU devices of this process",
                  functools.partial(cpu_devices, n),
                  memory=lambda: (None, "host memory, shared by the devices"))


def cpu_device_count(names: list[str]) -> int | None:
    """How many CPU devices the ``cpu:N`` targets among ``names`` need (None: none asked)."""
    counts = [int(m["n"]) for n in names if (m := FAMILIES["cpu"].pattern.match(n))]
    return max(counts, default=None)


def ensure_cpu_devices(n: int) -> None:
    """Asks JAX for at least ``n`` CPU devices (keeping more if ``XLA_FLAGS`` forces more); a
    no-op once JAX's backends have started (then :func:`cpu_devices` explains)."""
    forced = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                       os.environ.get("XLA_FLAGS", ""))
    with contextlib.suppress(RuntimeError):
        jax.config.update("jax_num_cpu_devices", max(n, int(forced[1]) if forced else 1))


# --------------------------------------------------------------------------------- tpu

#: HBM per chip (Cloud TPU documentation); libtpu reserves a little (v5e: 15.75 of 16 GiB).
TPU_MEMORY = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}

# libtpu looks for a TPU VM's metadata unless told otherwise; on a machine without TPUs that
# prints worker-hostname errors. These values only describe the compile-only topology.
_DEVICELESS_TPU_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
    # compile-only use touches no chip: let several processes (parallel tests, multi-host
    # planning on one machine) load libtpu at once instead of failing on its lockfile
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


@contextlib.contextmanager
def _deviceless_tpu_env() -> Iterator[None]:
    added = {k: v for k, v in _DEVICELESS_TPU_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@functools.cache
def _tpu_devices(topology: str) -> tuple[jax.Device, ...]:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ConfigError("target.name", "needs libtpu: pip install 'jaxmem[tpu-targets]'",
                          value="tpu:" + topology) from None
    from jax.experimental import topologies

    with _deviceless_tpu_env():
        try:
            topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
        except Exception as e:  # libtpu rejects the shape
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError("target.name", f"libtpu rejected the topology ({msg})",
                              value="tpu:" + topology) from None
    return tuple(topo.devices)


def _tpu(m: re.Match[str]) -> Target:
    topology = f"{m['version']}:{m['shape']}"
    return Target(m.string, f"compile-only TPU {topology} (libtpu)",
                  lambda: list(_tpu_devices(topology)), runnable=False,
                  memory=lambda: (TPU_MEMORY[m["version"]], f"HBM per {m['version']} chip"))


# --------------------------------------------------------------------------------- gpu

def _gpu(m: re.Match[str]) -> Target:
    from jaxmem import _gpu

    kind = m["kind"]
    if kind not in _gpu.GPU_KINDS:
        raise ConfigError("name", "unknown GPU kind", value=m.string,
                          choices=[f"gpu:{k}x8" for k in _gpu.GPU_KINDS])
    per_node, nodes = int(m["per_node"]), int(m["nodes"] or 1)
    topology = f"{nodes}x1x{per_node}"
    spec = _gpu.GPU_KINDS[kind]
    where = f"{nodes} nodes of {per_node}" if nodes > 1 else f"{per_node}"
    return Target(m.string, f"compile-only {where} x {spec.description} (CUDA plugin)",
                  lambda: list(_gpu.gpu_devices(kind, topology)), runnable=False,
                  memory=lambda: (spec.memory_bytes,
                                  f"device_memory_size in {Path(spec.spec_file).name}"))


FAMILIES: dict[str, Family] = {
    "local": Family(re.compile(r"^local$"), "local",
                    "the devices JAX attaches to in this process", _local),
    "cpu": Family(re.compile(r"^cpu:(?P<n>\d+)$"), "cpu:<N>",
                  "N CPU devices in this process (sharding on one machine)", _cpu),
    "tpu": Family(re.compile(r"^tpu:(?P<version>v4|v5e|v5p|v6e):(?P<shape>\d+x\d+(x\d+)?)$"),
                  "tpu:<v4|v5e|v5p|v6e>:<AxB[xC]>",
                  "compile-only TPU slice (libtpu deviceless topology)", _tpu),
    "gpu": Family(re.compile(r"^gpu:(?P<kind>[a-z0-9\-]+?)x(?P<per_node>\d+)"
                             r"(:(?P<nodes>\d+))?$"),
                  "gpu:<kind>x<N>[:<nodes>]",
                  "compile-only NVIDIA GPU nodes (jax CUDA plugin, target config)", _gpu),
}


def validate(name: str) -> None:
    """Raises ConfigError unless ``name`` is a well-formed target name."""
    _parse(name, field="name")


def _parse(name: str, field: str) -> Target:
    for family in FAMILIES.values():
        if m := family.pattern.match(name):
            return family.build(m)
    prefix = name.split(":", 1)[0]
    if prefix in FAMILIES and prefix != "local":
        raise ConfigError(field, f"expected {FAMILIES[prefix].syntax}", value=name)
    raise ConfigError(field, "unknown target", value=name,
                      choices=[f.syntax for f in FAMILIES.values()])


def get(name: str) -> Target:
    """The target called ``name``; ConfigError naming the valid forms otherwise."""
    return _parse(name, field="target.name")


def is_local_cpu(name: str) -> bool:
    """True for targets whose devices live in this process's CPU backend."""
    return bool(FAMILIES["cpu"].pattern.match(name))


@dataclasses.dataclass(frozen=True)
class Listing:
    """One line of ``jaxmem targets``."""

    name: str
    devices: str
    memory_bytes: int | None
    available: str
    doc: str


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def catalogue() -> list[Listing]:
    """The targets this jaxmem knows, with per-device memory and whether they work here."""
    local = jax.devices()
    rows = [Listing("local", f"{len(local)} x {local[0].device_kind}", _local_memory()[0],
                    "yes", FAMILIES["local"].doc),
            Listing("cpu:<N>", f"N (this process: {len(jax.devices('cpu'))})", None, "yes",
                    FAMILIES["cpu"].doc)]
    libtpu = "yes" if _has("libtpu") else "pip install 'jaxmem[tpu-targets]'"
    examples = {"v4": "2x2x1", "v5e": "16x16", "v5p": "4x4x4", "v6e": "16x16"}
    for version, memory in TPU_MEMORY.items():
        rows.append(Listing(f"tpu:{version}:<AxB[xC]>, e.g. tpu:{version}:{examples[version]}",
                            "one per chip", memory, libtpu, f"TPU {version} slice (libtpu)"))
    from jaxmem import _gpu

    cuda = "yes" if _gpu.plugin_available() else "pip install 'jaxmem[gpu-targets]'"
    for kind, spec in _gpu.GPU_KINDS.items():
        rows.append(Listing(f"gpu:{kind}x8[:<nodes>]", "8 per node", spec.memory_bytes, cuda,
                            spec.description))
    return rows
