"""Checkpoints measured (the ``checkpoint`` section, run mode): the training state saved with
orbax after the timed steps, then restored, into the same or another sharding and mesh.

The restore builds its targets abstractly: the program of the configuration with
``checkpoint.sharding`` / ``checkpoint.mesh`` gives the state as ShapeDtypeStructs carrying the
shardings to restore into (``jaxmem.build``: nothing allocated). ``restore: sharded`` hands
them to orbax, so each device reads only its own shards and nothing is materialised whole;
``restore: unsharded`` reads whole arrays into host memory and then places them, which is
what restoring without target shardings costs. While the restore runs, a thread samples the
process's resident host memory and the devices' ``bytes_in_use``; the saved state is deleted
from the devices first, so those peaks belong to the restore.

Example:
  >>> import jax, jax.numpy as jnp, tempfile
  >>> from jaxmem.checkpoint import save, restore, disk_bytes
  >>> state = {"w": jnp.ones((4, 4))}
  >>> path = save(state, tempfile.mkdtemp())[0]
  >>> abstract = {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32,
  ...                                       sharding=state["w"].sharding)}
  >>> float(restore(path, abstract, "sharded")["w"].sum()), disk_bytes(path) > 0
  (16.0, True)
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmem import distributed

if TYPE_CHECKING:
    from jaxmem.program import Program

#: how often the restore's memory is sampled, seconds
SAMPLE_S = 0.002


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _in_use(devices: list[jax.Device]) -> int | None:
    stats = [d.memory_stats() for d in devices]
    if any(s is None or "bytes_in_use" not in s for s in stats):
        return None
    return max(int(s["bytes_in_use"]) for s in stats)


class Sampler:
    """Samples resident host memory and the devices' ``bytes_in_use`` (max over ``devices``)
    every :data:`SAMPLE_S` seconds while in its ``with`` block: ``host_peak`` is the highest
    resident memory above the level at entry, ``device_peak`` the highest ``bytes_in_use``
    (None: not available)."""

    def __init__(self, devices: list[jax.Device]):
        self.devices = devices
        self.host_peak: int | None = None
        self.device_peak: int | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        host, device = rss_bytes(), _in_use(self.devices)
        if host is not None:
            self._host = max(self._host, host)
        if device is not None:
            self._device = max(self._device, device)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def __enter__(self) -> Sampler:
        self._host0, self._device0 = rss_bytes(), _in_use(self.devices)
        self._host, self._device = self._host0 or 0, self._device0 or 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        if self._host0 is not None:
            self.host_peak = self._host - self._host0
        if self._device0 is not None:
            self.device_peak = self._device


def checksums(state: Any) -> list[float]:
    """One float32 sum per leaf (PRNG keys by their key data): what a restore must give back."""
    def one(leaf: jax.Array) -> float:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return float(jnp.sum(jnp.asarray(leaf, jnp.float32)))

    return [one(leaf) for leaf in jax.tree.leaves(state)]


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save(state: Any, folder: str | os.PathLike) -> tuple[Path, float]:
    """Saves ``state`` with orbax into ``folder/checkpoint`` (replacing an earlier one);
    returns the path and the seconds until it was committed."""
    import orbax.checkpoint as ocp

    path = Path(folder).absolute() / "checkpoint"
    if jax.process_index() == 0 and path.exists():
        shutil.rmtree(path)
    distributed.sync("jaxmem-checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
    return path, time.perf_counter() - t0


def restore(path: str | os.PathLike, abstract: Any, how: str) -> Any:
    """Restores into ``abstract`` (ShapeDtypeStructs with shardings): ``sharded`` straight into
    the shards, ``unsharded`` whole into host memory first, then placed."""
    import orbax.checkpoint as ocp

    if how == "sharded":
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(path, abstract)
    else:
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
        with ocp.PyTreeCheckpointer() as checkpointer:
            whole = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=args))
        state = jax.device_put(whole, jax.tree.map(lambda a: a.sharding, abstract))
        del whole
    return jax.block_until_ready(state)


def save_and_restore(program: Program, target: Program, state: Any,
                     folder: str | os.PathLike) -> dict[str, Any]:
    """Saves ``state`` (``program``'s carried arguments), deletes it from the devices, restores
    it into ``target``'s shardings and checks it; returns the ``runtime.checkpoint_*`` fields."""
    config = program.config.checkpoint
    n = program.carried_args
    sums = checksums(state)
    path, save_s = save(state, folder)
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    for leaf in jax.tree.leaves(state):
        leaf.delete()  # the restore's peaks are the restore's own
    del state
    devices = [d for d in target.mesh.devices.flat if d.process_index == jax.process_index()]
    with Sampler(devices) as sampled:
        t0 = time.perf_counter()
        restored = restore(path, target.abstract_args[:n], config.restore)
        restore_s = time.perf_counter() - t0
    equal = bool(np.allclose(checksums(restored), sums, rtol=1e-5, atol=1e-6))
    mesh = " ".join(f"{k}={v}" for k, v in target.mesh.shape.items())
    return {
        "checkpoint_path": str(path),
        "checkpoint_save_s": save_s,
        "checkpoint_restore_s": restore_s,
        "checkpoint_bytes_on_disk": disk_bytes(path),
        "checkpoint_state_bytes": state_bytes,
        "checkpoint_restore": config.restore,
        "checkpoint_restored_into": f"{target.config.sharding.preset} over {mesh}",
        "checkpoint_restore_host_peak_bytes": sampled.host_peak,
        "checkpoint_restore_device_peak_bytes": sampled.device_peak,
        "checkpoint_restored_equal": equal,
    }
