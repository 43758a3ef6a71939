"""Where a configuration is compiled and run: a named set of devices, and its memory.

* ``local``: the devices of the backend JAX attaches to in this process (CPU, GPU or TPU).
* ``cpu:N``: N CPU devices of this process (fake devices for sharding on one machine; the CLI
  creates them, elsewhere set ``jax_num_cpu_devices`` before JAX starts).
* ``tpu:<version>:<topology>``, e.g. ``tpu:v5e:16x16`` or ``tpu:v5p:4x4x4``: compile-only
  TPU devices from libtpu's deviceless topologies (``pip install 'jaxmem[tpu-targets]'``).
* ``gpu:<kind>x<N>[:<nodes>]``, e.g. ``gpu:h100x8`` or ``gpu:h100x8:2``: compile-only NVIDIA
  GPUs through the jax CUDA plugin and a GPU target config shipped with jaxmem
  (``pip install 'jaxmem[gpu-targets]'``; ``jaxmem._gpu``).

Compile-only targets cannot ``run``. Each target knows the memory one device makes usable to
XLA, and where that figure comes from, so every row can say whether the configuration fits:

* ``local``: ``memory_stats()['bytes_limit']`` of the attached device (what its allocator will
  hand out); none on CPU.
* ``tpu:``: what libtpu itself says is available to a program, read from the message of a
  compile-time out-of-memory probe (v5e: 15.75 GiB of its 16 GiB of HBM); the documented HBM
  per chip only if that message cannot be read.
* ``gpu:``: the config's ``device_memory_size`` times the fraction JAX's GPU allocator may use
  (``XLA_PYTHON_CLIENT_MEM_FRACTION``, 0.75 unless ``measure.mem_fraction`` says otherwise).

Example:
  >>> from jaxmem import targets
  >>> len(targets.get("local").devices()) >= 1
  True
  >>> targets.get("cpu:8").usable_memory().bytes is None  # host memory, not a device's
  True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import jax

from jaxmem.errors import ConfigError

GiB = 2**30
#: JAX's GPU allocator may use this fraction of a device's memory unless
#: XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise (jax's GPU memory allocation docs; XLA sizes
#: its allocator as total memory x fraction)
JAX_GPU_MEM_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Memory:
    """The memory one device makes usable to XLA.

    Attributes:
      bytes: usable bytes per device (None: unknown, e.g. CPU host memory).
      source: where that figure comes from.
    """

    bytes: int | None
    source: str


def _unknown(mem_fraction: float | None = None) -> Memory:
    return Memory(None, "unknown")


@dataclasses.dataclass(frozen=True)
class Target:
    """A named set of devices to compile for.

    Attributes:
      name: as written in ``target.name``.
      doc: one line for listings.
      devices: returns the target's devices (real or compile-only).
      runnable: False for compile-only (virtual) devices: ``run`` mode is refused.
      memory: ``mem_fraction -> Memory`` of one device; ``mem_fraction`` is the GPU
        allocator's share (None: JAX's default), which only GPU targets use.
      family: the kind of target (``local``, ``cpu``, ``tpu``, ``gpu``).
      cpu_devices: CPU devices this process must have before JAX starts (``cpu:N``), or 0.
      count: how many devices, without asking a backend (None: ask, ``local``).
      kind: the platform of its devices (``cpu``, ``tpu``, ``gpu``; None: ask, ``local``).
      chip: the device model (``v5e``, ``h100``, ``cpu``; None: ask, ``local``).
      per_node: devices joined by the fast interconnect (a GPU node; None: all of them).
    """

    name: str
    doc: str
    devices: Callable[[], list[jax.Device]]
    runnable: bool = True
    memory: Callable[[float | None], Memory] = _unknown
    family: str = "local"
    cpu_devices: int = 0
    count: int | None = None
    kind: str | None = None
    chip: str | None = None
    per_node: int | None = None

    def device_count(self) -> int:
        """Devices of the target (``local``: starts this process's backend)."""
        return self.count if self.count is not None else jax.device_count()

    def platform(self) -> str:
        """Platform of its devices (``local``: this process's default backend)."""
        return self.kind or jax.default_backend()

    def usable_memory(self, mem_fraction: float | None = None) -> Memory:
        """The memory of one device that XLA may use, and its source (may start a backend,
        or compile a probe for a TPU target: call it where that is fine)."""
        return self.memory(mem_fraction)


@dataclasses.dataclass(frozen=True)
class Family:
    """A kind of target name: its pattern, how to build one, and a line for ``jaxmem targets``."""

    pattern: re.Pattern[str]
    syntax: str
    doc: str
    build: Callable[[re.Match[str]], Target]


# ------------------------------------------------------------------------------- local

def _local_memory(mem_fraction: float | None = None) -> Memory:
    del mem_fraction  # the attached device's limit already reflects this process's settings
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return Memory(int(stats["bytes_limit"]),
                      "memory_stats()['bytes_limit'] of the attached device")
    return Memory(None, f"not reported by the {jax.local_devices()[0].platform} backend")


def _local(_: re.Match[str]) -> Target:
    return Target("local", "the devices of the backend JAX attaches to here", jax.devices,
                  memory=_local_memory, family="local")


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


#: fake CPU devices jaxmem asks one process for (4096 take ~15 s to create; 16384 > 2 min)
MAX_CPU_DEVICES = 4096


def _cpu(m: re.Match[str]) -> Target:
    n = int(m["n"])
    if not 1 <= n <= MAX_CPU_DEVICES:
        raise ConfigError("target.name", f"needs between 1 and {MAX_CPU_DEVICES} devices",
                          value=m.string)
    return Target(m.string, f"{n} CPU devices of this process",
                  functools.partial(cpu_devices, n),
                  memory=lambda _=None: Memory(None, "host memory, shared by the devices"),
                  family="cpu", cpu_devices=n, count=n, kind="cpu", chip="cpu")


def starts_no_accelerator(target: Target) -> bool:
    """Whether asking for ``target``'s devices here leaves any accelerator alone: CPU targets,
    compile-only ones, and ``local`` when JAX is limited to the CPU (``JAX_PLATFORMS=cpu``)."""
    return target.family != "local" or os.environ.get("JAX_PLATFORMS", "") == "cpu"


def ensure_cpu_devices(targets: Iterable[Target]) -> None:
    """Asks JAX for the CPU devices the ``cpu:N`` targets among ``targets`` need (keeping more
    if ``XLA_FLAGS`` forces more); a no-op once JAX's backends have started (then
    :func:`cpu_devices` explains)."""
    n = max((t.cpu_devices for t in targets), default=0)
    if not n:
        return
    forced = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                       os.environ.get("XLA_FLAGS", ""))
    with contextlib.suppress(RuntimeError):
        jax.config.update("jax_num_cpu_devices", max(n, int(forced[1]) if forced else 1))


# --------------------------------------------------------------------------------- tpu

#: HBM per chip (Cloud TPU documentation). XLA gets less (libtpu, v5e: 15.75 GiB): the usable
#: figure is read from libtpu itself (:func:`_tpu_memory`); these are the fallback.
TPU_MEMORY = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
#: libtpu's compile-time out-of-memory messages name the HBM available to a program:
#: "... exceeds available HBM (15.75G)" or "Used 15.75G of 15.75G hbm" (units of 2**30)
_TPU_AVAILABLE = re.compile(r"available HBM \((?P<n>\d+(?:\.\d+)?)(?P<unit>[KMGT])\)"
                            r"|of (?P<n2>\d+(?:\.\d+)?)(?P<unit2>[KMGT]) hbm")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

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


def available_hbm(message: str) -> int | None:
    """The HBM a libtpu out-of-memory message says is available to a program, in bytes (to
    its 0.01 GiB resolution); None if the message names none."""
    found = _TPU_AVAILABLE.search(message)
    if not found:
        return None
    value, unit = found["n"] or found["n2"], found["unit"] or found["unit2"]
    return round(float(value) * _UNITS[unit])


@functools.cache
def _tpu_memory(topology: str) -> Memory:
    """What libtpu makes available to one program on one device of ``topology``: a program
    whose output cannot fit (1 TiB) is compiled, and libtpu's refusal names the figure."""
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    version = topology.split(":")[0]
    device = _tpu_devices(topology)[0]
    one = NamedSharding(Mesh(np.asarray([device], dtype=object), ("x",)), PartitionSpec())
    try:
        jax.jit(lambda: jnp.zeros((2**40,), jnp.int8), out_shardings=one).lower().compile()
        message = ""
    except Exception as e:  # the expected refusal
        message = str(e)
    available = available_hbm(message)
    if available is None:
        return Memory(TPU_MEMORY[version], f"HBM per {version} chip (Cloud TPU documentation; "
                      "libtpu's own figure could not be read, and it keeps some for itself)")
    return Memory(available, f"HBM libtpu makes available to a program on a {version} device "
                  "(its out-of-memory message for a probe compile; 0.01 GiB resolution)")


#: largest chip extent per dimension libtpu compiles for (beyond it libtpu aborts the process:
#: "Check failed: Topology()->chip_bounds().x <= 16", seen with v5e:32x32); others unbounded
TPU_MAX_EXTENT = {"v5e": 16}
MAX_TPU_DEVICES = 65536


def _tpu(m: re.Match[str]) -> Target:
    topology = f"{m['version']}:{m['shape']}"
    extents = [int(x) for x in m["shape"].split("x")]
    limit = TPU_MAX_EXTENT.get(m["version"])
    if limit is not None and max(extents) > limit:
        raise ConfigError("target.name", f"{m['version']} slices are at most {limit} chips "
                          "along each side (libtpu aborts beyond that)", value=m.string)
    if min(extents) < 1 or math.prod(extents) > MAX_TPU_DEVICES:
        raise ConfigError("target.name", f"needs between 1 and {MAX_TPU_DEVICES} chips",
                          value=m.string)
    return Target(m.string, f"compile-only TPU {topology} (libtpu)",
                  lambda: list(_tpu_devices(topology)), runnable=False,
                  memory=lambda _=None: _tpu_memory(topology), family="tpu",
                  count=math.prod(extents), kind="tpu", chip=m["version"])


# --------------------------------------------------------------------------------- gpu

#: an NVLink domain holds up to 72 GPUs (GB200 NVL72)
MAX_GPUS_PER_NODE, MAX_GPU_NODES = 72, 1024


def _gpu(m: re.Match[str]) -> Target:
    from jaxmem import _gpu

    kind = m["kind"]
    if kind not in _gpu.GPU_KINDS:
        raise ConfigError("target.name", "unknown GPU kind", value=m.string,
                          choices=[f"gpu:{k}x8" for k in _gpu.GPU_KINDS])
    per_node, nodes = int(m["per_node"]), int(m["nodes"] or 1)
    if not (1 <= per_node <= MAX_GPUS_PER_NODE and 1 <= nodes <= MAX_GPU_NODES):
        raise ConfigError("target.name", f"needs 1 to {MAX_GPUS_PER_NODE} GPUs per node and 1 "
                          f"to {MAX_GPU_NODES} nodes", value=m.string)
    topology = f"{nodes}x1x{per_node}"
    gpu = _gpu.GPU_KINDS[kind]
    where = f"{nodes} nodes of {per_node}" if nodes > 1 else f"{per_node}"
    def memory(mem_fraction: float | None = None) -> Memory:
        fraction = JAX_GPU_MEM_FRACTION if mem_fraction is None else mem_fraction
        why = ("JAX's default XLA_PYTHON_CLIENT_MEM_FRACTION" if mem_fraction is None
               else "measure.mem_fraction")
        return Memory(int(gpu.memory_bytes * fraction),
                      f"device_memory_size in {Path(gpu.config_file).name} x {fraction:g} "
                      f"({why}: the share JAX's GPU allocator may use)")

    return Target(m.string, f"compile-only {where} x {gpu.description} (CUDA plugin)",
                  lambda: list(_gpu.gpu_devices(kind, topology)), runnable=False,
                  memory=memory, family="gpu", count=per_node * nodes, kind="gpu", chip=kind,
                  per_node=per_node)


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
    """Raises ConfigError (path ``name``) unless ``name`` is a well-formed target name."""
    try:
        get(name)
    except ConfigError as e:
        raise e.replace(path="name") from None


@functools.cache
def get(name: str) -> Target:
    """The target called ``name`` (parsed once per process: the same object every time);
    ConfigError (path ``target.name``) naming the valid forms otherwise."""
    for family in FAMILIES.values():
        if m := family.pattern.match(name):
            return family.build(m)
    prefix = name.split(":", 1)[0]
    if prefix in FAMILIES and prefix != "local":
        raise ConfigError("target.name", f"expected {FAMILIES[prefix].syntax}", value=name)
    raise ConfigError("target.name", "unknown target", value=name,
                      choices=[f.syntax for f in FAMILIES.values()])


@dataclasses.dataclass(frozen=True)
class Listing:
    """One line of ``jaxmem targets``."""

    name: str
    devices: str
    memory: Memory
    available: str
    doc: str


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def catalogue() -> list[Listing]:
    """The targets this jaxmem knows, with the usable memory of one device (read from libtpu
    where it is installed) and whether they work here."""
    local = jax.devices()
    rows = [Listing("local", f"{len(local)} x {local[0].device_kind}", _local_memory(),
                    "yes", FAMILIES["local"].doc),
            Listing("cpu:<N>", f"N (this process: {len(jax.devices('cpu'))})",
                    get("cpu:1").usable_memory(), "yes", FAMILIES["cpu"].doc)]
    libtpu = _has("libtpu")
    examples = {"v4": "2x2x1", "v5e": "16x16", "v5p": "4x4x4", "v6e": "16x16"}
    for version, hbm in TPU_MEMORY.items():
        memory = (get(f"tpu:{version}:{examples[version]}").usable_memory() if libtpu
                  else Memory(hbm, f"HBM per {version} chip; libtpu tells what XLA may use"))
        rows.append(Listing(f"tpu:{version}:<AxB[xC]>, e.g. tpu:{version}:{examples[version]}",
                            "one per chip", memory,
                            "yes" if libtpu else "pip install 'jaxmem[tpu-targets]'",
                            f"TPU {version} slice (libtpu)"))
    from jaxmem import _gpu

    cuda = "yes" if _gpu.plugin_available() else "pip install 'jaxmem[gpu-targets]'"
    for kind, gpu in _gpu.GPU_KINDS.items():
        rows.append(Listing(f"gpu:{kind}x8[:<nodes>]", "8 per node",
                            get(f"gpu:{kind}x8").usable_memory(), cuda, gpu.description))
    return rows
