"""Where a configuration is compiled and run: a named set of devices.

* ``local``: the devices of the backend JAX attaches to in this process (CPU, GPU or TPU).
* ``tpu:<topology>``, e.g. ``tpu:v5e:2x2`` or ``tpu:v5p:4x4x4``: compile-only TPU devices from
  libtpu's deviceless topologies (``pip install 'jaxmem[tpu-targets]'``), so that a TPU
  pod's per-chip memory can be planned on a machine without TPUs.

Example:
  >>> from jaxmem import targets
  >>> len(targets.get("local").devices()) >= 1
  True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterator

import jax

from jaxmem.errors import ConfigError

TPU_PREFIX = "tpu:"
TPU_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):\d+x\d+(x\d+)?$")


@dataclasses.dataclass(frozen=True)
class Target:
    """A named set of devices to compile for.

    Attributes:
      name: as written in ``target.name``.
      doc: one line for listings.
      devices: returns the target's devices (real or compile-only).
      runnable: False for compile-only (virtual) devices: ``run`` mode is refused.
    """

    name: str
    doc: str
    devices: Callable[[], list[jax.Device]]
    runnable: bool = True


TARGETS: dict[str, Target] = {
    "local": Target("local", "the devices of the backend JAX attaches to here", jax.devices),
}

# libtpu looks for a TPU VM's metadata unless told otherwise; on a machine without TPUs that
# prints worker-hostname errors. These values only describe the compile-only topology.
_DEVICELESS_TPU_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
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
                          value=TPU_PREFIX + topology) from None
    from jax.experimental import topologies

    with _deviceless_tpu_env():
        try:
            topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
        except Exception as e:  # libtpu rejects the shape
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError("target.name", f"libtpu rejected the topology ({msg})",
                              value=TPU_PREFIX + topology) from None
    return tuple(topo.devices)


def _tpu_target(name: str) -> Target:
    topology = name.removeprefix(TPU_PREFIX)
    return Target(name, f"compile-only TPU {topology} (libtpu)",
                  lambda: list(_tpu_devices(topology)), runnable=False)


def validate(name: str) -> None:
    """Raises ConfigError unless ``name`` is a known target or a well-formed ``tpu:`` one."""
    if name in TARGETS:
        return
    if name.startswith(TPU_PREFIX):
        if TPU_TOPOLOGY.match(name.removeprefix(TPU_PREFIX)):
            return
        raise ConfigError("name", "expected tpu:<v4|v5e|v5p|v6e>:<AxB or AxBxC>", value=name)
    raise ConfigError("name", "unknown target", value=name,
                      choices=[*sorted(TARGETS), "tpu:<version>:<topology>"])


def get(name: str) -> Target:
    """The target called ``name``; ConfigError listing the valid names otherwise."""
    try:
        validate(name)
    except ConfigError as e:
        raise e.at("target") from None
    return TARGETS[name] if name in TARGETS else _tpu_target(name)
