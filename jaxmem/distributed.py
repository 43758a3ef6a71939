"""Several JAX processes (hosts) measuring one experiment together.

The same ``jaxmem run`` is launched on every host of a TPU pod slice or GPU cluster. Each process
joins the distributed system (``jax.distributed.initialize``), builds the same mesh over the
global devices, and measures its own devices; process 0 gathers the per-process figures and
writes the one result file.

* Compile mode: every process compiles each configuration for the global mesh; the compiled
  totals of all processes are gathered (``compiled.total_bytes_per_process``).
* Run mode: each configuration's worker subprocesses form their own distributed system on the
  coordinator's port + 1 + the configuration's index (so they need an explicit coordinator),
  step together, and gather each process's device peak and step time.

On CPU devices the cross-process collectives use gloo.

Example:
  >>> from jaxmem.distributed import Cluster
  >>> Cluster("10.0.0.1:1234", 4, 0).for_point(2).coordinator
  '10.0.0.1:1237'
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

import jax
import numpy as np

from jaxmem.errors import ConfigError
from jaxmem.units import fmt_bytes

if TYPE_CHECKING:
    from jaxmem.record import Record

#: environment variable carrying a Cluster to run-mode workers
ENV = "JAXMEM_CLUSTER"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How this process joins a distributed JAX system.

    Attributes:
      coordinator: ``host:port`` of process 0's coordination service; None lets
        ``jax.distributed.initialize`` detect the cluster (TPU VMs, SLURM, ...).
      num_processes: processes in the system (None: detected).
      process_id: this process's index (None: detected).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self) -> None:
        if self.coordinator is not None:
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError("--coordinator", "expected HOST:PORT", value=self.coordinator)
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError("--num-processes", "must be >= 1", value=self.num_processes)
        if (self.process_id is not None and self.num_processes is not None
                and not 0 <= self.process_id < self.num_processes):
            raise ConfigError("--process-id", f"must be in [0, {self.num_processes})",
                              value=self.process_id)

    @property
    def explicit(self) -> bool:
        """Whether the coordinator, process count and id are all given."""
        return None not in (self.coordinator, self.num_processes, self.process_id)

    def for_point(self, index: int) -> Cluster:
        """The cluster of configuration ``index``'s run-mode workers: next ports up."""
        if self.coordinator is None:
            raise ConfigError("--coordinator", "run mode across processes needs an explicit "
                              "coordinator (its workers meet on the next ports)", value=None)
        host, _, port = self.coordinator.rpartition(":")
        return dataclasses.replace(self, coordinator=f"{host}:{int(port) + 1 + index}")

    def initialize(self) -> None:
        """Joins the distributed system (gloo collectives for CPU devices)."""
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=self.coordinator,
                                   num_processes=self.num_processes,
                                   process_id=self.process_id)

    def to_env(self) -> dict[str, str]:
        """The environment that hands this cluster to a worker subprocess."""
        return {ENV: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls) -> Cluster | None:
        """The cluster a parent process handed down, if any."""
        raw = os.environ.get(ENV)
        return cls(**json.loads(raw)) if raw else None


def gather(values: dict[str, float | None]) -> dict[str, list[float | None]]:
    """Each process's ``values`` (same keys everywhere), gathered on every process:
    ``{key: [process 0's, process 1's, ...]}``. A single process gets one-element lists."""
    keys = sorted(values)
    row = np.array([np.nan if values[k] is None else float(values[k]) for k in keys])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        table = np.asarray(multihost_utils.process_allgather(row))
    else:
        table = row[None]
    return {k: [None if np.isnan(v) else float(v) for v in table[:, i]]
            for i, k in enumerate(keys)}


def gather_compiled(record: Record) -> None:
    """Adds every process's compiled total to ``record`` (all processes must call this for
    the same configuration, whatever its status)."""
    totals = gather({"total": record.get("compiled.total_bytes")})["total"]
    if record.ok:
        record.compiled["total_bytes_per_process"] = totals
        if len(set(totals)) > 1:
            record.notes.append("processes compiled different totals: "
                                + ", ".join(fmt_bytes(t) for t in totals))


def is_process_zero(cluster: Cluster | None) -> bool:
    """Whether this process writes results: process 0, or the only process."""
    if cluster is None:
        return True
    if cluster.process_id is not None:
        return cluster.process_id == 0
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches this point (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
