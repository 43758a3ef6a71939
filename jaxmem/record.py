"""One measured configuration: a Record, its stable field names and what each means.

A record groups its numbers by **source**: ``analytic`` (computed from shapes and the jaxpr),
``compiled`` (XLA's analysis of the compiled step, per device) and ``runtime`` (measured while
running, in a fresh process). Flattened, the field names are dotted: ``compiled.temp_bytes``.

Example:
  >>> from jaxmem.record import Record
  >>> r = Record(experiment="e", index=0, name="base", mode="compile", status="ok",
  ...            compiled={"temp_bytes": 1024})
  >>> r.get("compiled.temp_bytes"), "compiled.temp_bytes" in r.flat()
  (1024, True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import math
import platform
from collections.abc import Sequence
from typing import Any

import jax

SCHEMA_VERSION = 2
#: what became of a configuration
STATUSES = ("ok", "error", "unsupported", "oom", "timeout", "crashed")

#: Every field a record can carry (flattened name -> meaning). ``config.*`` fields mirror the
#: experiment's configuration sections and are documented there.
FIELDS: dict[str, str] = {
    "schema_version": "version of this layout",
    "experiment": "experiment name",
    "index": "position in the sweep grid; 0 is the baseline for deltas",
    "name": "grid point name, e.g. remat=full,precision=bf16-mixed",
    "key": "hash of what determines the numbers: the configuration, the mode and the library "
           "versions (--resume skips a configuration whose key already has a row)",
    "mode": "compile or run",
    "status": "ok; error; unsupported (valid, but not on this backend); oom (XLA refused the "
              "step for lack of device memory: at compile time on TPU, or when running); "
              "timeout (measure.timeout_s ran out); crashed (the worker process died, e.g. by "
              "a signal)",
    "error": "why, when status is not ok",
    "notes": "caveats about the numbers on this backend",
    "env.backend": "platform of the devices measured (cpu, gpu, tpu)",
    "env.device_kind": "device model, e.g. NVIDIA H100 80GB HBM3",
    "env.device_count": "devices in the configuration's mesh",
    "env.process_count": "JAX processes (hosts)",
    "env.device_memory_bytes": "memory one device of the target lets XLA use: libtpu's "
                               "figure (TPU), the GPU allocator's share of the device "
                               "(XLA_PYTHON_CLIENT_MEM_FRACTION), or the attached device's "
                               "bytes_limit (None: unknown, e.g. CPU)",
    "env.device_memory_source": "where device_memory_bytes comes from",
    "env.jax_version": "jax version",
    "env.jaxlib_version": "jaxlib version",
    "env.flax_version": "flax version",
    "env.optax_version": "optax version",
    "env.python_version": "Python version",
    "analytic.param_count": "parameters (elements), whole model",
    "analytic.param_bytes": "parameter bytes in the storage dtype, whole model",
    "analytic.rest_bytes": "model variables that are not parameters (batch statistics, pruning "
                           "masks), whole model",
    "analytic.opt_state_bytes": "optimizer state bytes, whole model",
    "analytic.batch_bytes": "bytes of one global batch",
    "analytic.param_bytes_per_device": "parameter bytes one device holds under the sharding "
                                       "(the most loaded device)",
    "analytic.opt_state_bytes_per_device": "optimizer-state bytes one device holds",
    "analytic.batch_bytes_per_device": "batch bytes one device holds",
    "analytic.argument_bytes_per_device": "bytes of all the step's arguments one device holds "
                                          "(their own bytes, before any layout padding)",
    "analytic.residual_bytes": "bytes the forward pass saves for the parameter gradients "
                               "(activations, compute-dtype parameter copies), from the jaxpr "
                               "before XLA fusion: the whole global batch, all devices "
                               "together, not per device (one microbatch when accumulating); "
                               "None without a backward",
    "analytic.kv_cache_bytes": "decode: keys and values of every layer, batch x context",
    "analytic.context": "decode: cached positions per sequence",
    "estimate.total_bytes": "per device: jaxmem.estimate's total from shape formulas, no "
                            "compile (comparable with compiled.total_bytes; train rows of "
                            "built-in models)",
    "estimate.error": "estimate.total_bytes / compiled.<fits_basis> - 1 (the compiled figure "
                      "fits uses: total_bytes, on TPU libtpu's peak_bytes)",
    "estimate.seconds": "seconds the estimate took",
    **{f"estimate.{k}_bytes": f"per device: the estimate's {k.replace('_', ' ')} term" for k in (
        "parameters", "optimizer_state", "batch", "saved_activations", "parameter_copies",
        "gathered_parameters", "gradients", "peak_transients")},
    "doctor.needs_bytes": "a row that does not fit: what its step needs per device (the "
                          "compiler's figure, or the bytes its out-of-memory refusal names)",
    "doctor.has_bytes": "a row that does not fit: the memory of one device of the target",
    "doctor.sets": "the planner's cheapest change that fits, as --set strings",
    "doctor.estimate_bytes": "the estimate of the changed configuration, per device",
    "doctor.compiled_bytes": "its compiled figure, where the doctor verified it",
    "doctor.verified": "the change was compiled and fits",
    "doctor.why": "how the suggestion was checked, or why there is none",
    "compiled.argument_bytes": "per device: step inputs (params, optimizer state, batch)",
    "compiled.output_bytes": "per device: step outputs",
    "compiled.alias_bytes": "per device: outputs written into donated inputs",
    "compiled.temp_bytes": "per device: XLA scratch (activations, gradients, ...)",
    "compiled.total_bytes": "per device: argument + output + temp - alias",
    "compiled.peak_bytes": "per device: XLA's peak_memory_in_bytes where reported (libtpu: "
                           "the peak it checks against HBM; XLA:CPU: leaves out loop bodies' "
                           "working set)",
    "compiled.generated_code_bytes": "per device: compiled program size",
    "compiled.host_argument_bytes": "per device: host-memory arguments",
    "compiled.host_output_bytes": "per device: host-memory outputs",
    "compiled.host_alias_bytes": "per device: host-memory aliased outputs",
    "compiled.host_temp_bytes": "per device: host-memory scratch",
    "compiled.host_generated_code_bytes": "per device: host program size",
    "compiled.flops": "XLA cost analysis: floating-point operations of one step",
    "compiled.bytes_accessed": "XLA cost analysis: bytes read and written by one step",
    "compiled.transcendentals": "XLA cost analysis: transcendental operations",
    "compiled.cost_has_loops": "true when the step has loops (a scanned stack): XLA counts a "
                               "loop body once, so flops, bytes_accessed and transcendentals "
                               "undercount",
    "compiled.fits": "compiled.<fits_basis> <= env.device_memory_bytes (absent when the "
                     "target's memory is unknown; false for oom rows)",
    "compiled.headroom_bytes": "env.device_memory_bytes - compiled.<fits_basis> (negative: "
                               "short by that much)",
    "compiled.fits_basis": "the figure fits is decided by: peak_bytes on TPU (libtpu's own "
                           "check), total_bytes on GPU and CPU",
    "compiled.collective_count": "collective instructions in the compiled HLO (a loop body "
                                 "counts once)",
    "compiled.collective_bytes": "sum of their result bytes on one device",
    **{f"compiled.{k.replace('-', '_')}_{what}": f"{what} of {k} instructions in the HLO"
       for k in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                 "collective-permute") for what in ("count", "bytes")},
    "compiled.total_bytes_per_process": "multi-process: compiled.total_bytes of each process, "
                                        "gathered by process 0",
    "compiled.lower_seconds": "seconds to trace and lower the step",
    "compiled.compile_seconds": "seconds for XLA to compile the step (on a cache hit: to "
                                "load it from JAX's persistent compilation cache)",
    "compiled.cache_hit": "the compiled step came from JAX's persistent compilation cache",
    "compiled.oom_required_bytes": "oom rows: the bytes XLA said the step needs, where its "
                                   "message says (libtpu: to 0.01 GiB)",
    "compiled.oom_available_bytes": "oom rows: the bytes XLA said the device has",
    "runtime.oom_required_bytes": "oom rows in run mode: the bytes the allocator was asked "
                                  "for, where its message says",
    "runtime.oom_available_bytes": "oom rows in run mode: the bytes it had",
    "compiled.platform": "platform compiled for",
    "compiled.device_kind": "device model compiled for",
    "compiled.num_devices": "devices the compiled program spans",
    "runtime.step_time_s": "median seconds of one step (run mode)",
    "runtime.step_times_s": "every timed step, seconds",
    "runtime.warmup_steps": "untimed steps before timing",
    "runtime.steps": "timed steps",
    "runtime.final_loss": "loss of the last step (train)",
    "runtime.device_stats": "available, or why device memory_stats() are missing",
    "runtime.device_peak_bytes": "max over the mesh's devices of memory_stats()"
                                 "['peak_bytes_in_use']",
    "runtime.device_bytes_in_use": "max over devices of bytes_in_use after the steps",
    "runtime.device_bytes_limit": "min over devices of bytes_limit",
    "runtime.host_peak_rss_bytes": "peak resident memory of the worker process (host memory)",
    "runtime.profile_trace_dir": "measure.profile trace/both: the jax.profiler trace of the "
                                 "profiled steps (xprof --logdir DIR, or TensorBoard)",
    "runtime.profile_memory_path": "measure.profile memory/both: pprof device memory profile "
                                   "after a step: the new state, batch and loss (pprof -http=:)",
    "runtime.profile_steps": "steps traced after the timed ones (not in step_time_s)",
    "runtime.checkpoint_path": "checkpoint: the orbax checkpoint of the training state",
    "runtime.checkpoint_save_s": "checkpoint: seconds to save the state (until committed)",
    "runtime.checkpoint_restore_s": "checkpoint: seconds to restore it onto the devices",
    "runtime.checkpoint_bytes_on_disk": "checkpoint: bytes of its files",
    "runtime.checkpoint_state_bytes": "checkpoint: bytes of the state saved, whole model",
    "runtime.checkpoint_restore": "checkpoint: sharded (abstract targets with shardings) or "
                                  "unsharded (whole arrays through host memory)",
    "runtime.checkpoint_restored_into": "checkpoint: the sharding preset and mesh restored into",
    "runtime.checkpoint_restore_host_peak_bytes": "checkpoint: resident host memory the "
                                                  "restore added at its peak (sampled every "
                                                  "2 ms; Linux)",
    "runtime.checkpoint_restore_device_peak_bytes": "checkpoint: max over devices of "
                                                    "bytes_in_use during the restore (None "
                                                    "where memory_stats() is unavailable)",
    "runtime.checkpoint_restored_equal": "checkpoint: the restored state's per-leaf sums equal "
                                         "the saved state's",
    "runtime.device_peak_bytes_per_process": "multi-process: each process's device peak",
    "runtime.step_time_s_per_process": "multi-process: each process's median step time",
    "runtime.host_peak_rss_bytes_per_process": "multi-process: each process's worker peak RSS",
    "runtime.preallocate": "XLA_PYTHON_CLIENT_PREALLOCATE in the worker (None: unset)",
    "runtime.mem_fraction": "XLA_PYTHON_CLIENT_MEM_FRACTION in the worker (None: unset)",
    "runtime.allocator": "XLA_PYTHON_CLIENT_ALLOCATOR in the worker (None: unset)",
}


@dataclasses.dataclass
class Record:
    """The result row of one configuration (see :data:`FIELDS`)."""

    experiment: str
    index: int
    name: str
    mode: str
    status: str
    error: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    analytic: dict[str, Any] = dataclasses.field(default_factory=dict)
    estimate: dict[str, Any] = dataclasses.field(default_factory=dict)
    compiled: dict[str, Any] = dataclasses.field(default_factory=dict)
    runtime: dict[str, Any] = dataclasses.field(default_factory=dict)
    doctor: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    key: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-ready dict, fixed key order."""
        return {
            "schema_version": self.schema_version,
            "experiment": self.experiment,
            "index": self.index,
            "name": self.name,
            "key": self.key,
            "mode": self.mode,
            "status": self.status,
            "error": self.error,
            "notes": list(self.notes),
            "env": dict(self.env),
            "analytic": dict(self.analytic),
            "estimate": dict(self.estimate),
            "compiled": dict(self.compiled),
            "runtime": dict(self.runtime),
            "doctor": dict(self.doctor),
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Reads :meth:`to_dict` output back."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def flat(self) -> dict[str, Any]:
        """Dotted keys (``compiled.temp_bytes``, ``config.model.d_model``) to scalar values."""
        out: dict[str, Any] = {}
        _flatten(self.to_dict(), "", out)
        return out

    def get(self, path: str, default: Any = None) -> Any:
        """A value by dotted path, e.g. ``record.get("compiled.temp_bytes")``."""
        node: Any = self.to_dict()
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):  # an empty section (runtime in compile mode) adds no column
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    else:
        out[prefix] = node


def finite(sections: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``sections`` with every non-finite float (a diverged loss, say) replaced by None, which
    JSON can hold, and a note naming each."""
    notes: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            notes.append(f"{path} was {value} (written as null)")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    return {k: clean(v, k) for k, v in sections.items()}, notes


@functools.cache
def versions() -> dict[str, str]:
    """Versions of what produces the numbers (jaxmem, jax, jaxlib, flax, optax, and the TPU
    and CUDA plugins where installed)."""
    out = {}
    for dist in ("jaxmem", "jax", "jaxlib", "flax", "optax", "libtpu", "jax-cuda12-plugin",
                 "jax-cuda12-pjrt"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


#: measure settings that do not change a mode's numbers, left out of the key
_NOT_IN_KEY = {"compile": ("mode", "timeout_s", "warmup_steps", "steps"),
               "run": ("mode", "timeout_s")}


def record_key(config: dict[str, Any], mode: str) -> str:
    """The :data:`FIELDS` ``key`` of a configuration measured in ``mode``: the same key means
    the same numbers (the same configuration, mode and library versions; how long a worker
    may take does not count).

    Example:
      >>> a = record_key({"task": "train", "measure": {"timeout_s": 60}}, "compile")
      >>> a == record_key({"task": "train", "measure": {"timeout_s": 9}}, "compile")
      True
    """
    measure = {k: v for k, v in config.get("measure", {}).items()
               if k not in _NOT_IN_KEY.get(mode, ())}
    blob = json.dumps({"config": {**config, "measure": measure}, "mode": mode,
                       "versions": versions()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def environment(devices: Sequence[jax.Device]) -> dict[str, Any]:
    """Backend, device kind and count, process count and library versions."""
    import flax
    import jaxlib
    import optax

    return {
        "backend": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "flax_version": flax.__version__,
        "optax_version": optax.__version__,
        "python_version": platform.python_version(),
    }
