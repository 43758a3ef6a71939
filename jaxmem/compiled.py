"""XLA's compiled memory and cost analysis of any function (source ``compiled``).

All byte counts are **per device**: XLA compiles one SPMD program that every device runs.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxmem
  >>> x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  >>> report = jaxmem.compiled_memory(lambda a: jnp.tanh(a @ a) @ a, x)
  >>> report.argument_bytes
  262144
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """What XLA says one compiled program needs, per device.

    Attributes:
      argument_bytes: inputs (parameters, optimizer state, batch) resident on the device.
      output_bytes: outputs.
      alias_bytes: outputs that reuse a donated input's buffer (counted in both above).
      temp_bytes: scratch XLA allocates while the program runs (activations, gradients, ...).
      generated_code_bytes: the compiled program itself.
      host_*_bytes: the same for buffers in host memory (offloading), where the backend has it.
      peak_bytes: XLA's ``peak_memory_in_bytes`` where the backend reports it, else None. On
        XLA:CPU it has been seen below ``temp_bytes``; treat ``total_bytes`` as the bound.
      flops, bytes_accessed, transcendentals: ``cost_analysis()`` figures, None if absent.
      cost_has_loops: the program has loops (``while``, e.g. a scanned layer stack). XLA's cost
        analysis counts a loop body once, so the three cost figures then undercount.
      lower_seconds, compile_seconds: wall time of ``lower`` and ``compile``.
      platform: backend the program was compiled for (``cpu``, ``gpu``, ``tpu``).
      device_kind: e.g. ``cpu``, ``NVIDIA H100 80GB HBM3``, ``TPU v5 lite``.
      num_devices: devices the program spans.
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    host_argument_bytes: int
    host_output_bytes: int
    host_alias_bytes: int
    host_temp_bytes: int
    host_generated_code_bytes: int
    peak_bytes: int | None
    flops: float | None
    bytes_accessed: float | None
    transcendentals: float | None
    cost_has_loops: bool
    lower_seconds: float
    compile_seconds: float
    platform: str
    device_kind: str
    num_devices: int

    @property
    def total_bytes(self) -> int:
        """``argument + output + temp - alias``: the usual upper bound of device memory."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def to_dict(self) -> dict[str, Any]:
        """All fields plus ``total_bytes``, JSON-ready."""
        out = dataclasses.asdict(self)
        out["total_bytes"] = self.total_bytes
        return out

    def __str__(self) -> str:
        from jaxmem.units import fmt_bytes

        rows = [
            ("argument", self.argument_bytes), ("output", self.output_bytes),
            ("alias", self.alias_bytes), ("temp", self.temp_bytes),
            ("total", self.total_bytes),
        ]
        body = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in rows)
        return f"MemoryReport({self.device_kind} x{self.num_devices}: {body} per device)"

    @classmethod
    def from_compiled(
        cls, compiled: jax.stages.Compiled, *, lower_seconds: float, compile_seconds: float
    ) -> MemoryReport:
        """Reads ``memory_analysis()`` and ``cost_analysis()`` of a compiled program."""
        m = compiled.memory_analysis()
        cost = _cost(compiled)
        devices = _devices(compiled)
        peak = getattr(m, "peak_memory_in_bytes", None)
        return cls(
            argument_bytes=int(m.argument_size_in_bytes),
            output_bytes=int(m.output_size_in_bytes),
            alias_bytes=int(m.alias_size_in_bytes),
            temp_bytes=int(m.temp_size_in_bytes),
            generated_code_bytes=int(m.generated_code_size_in_bytes),
            host_argument_bytes=int(m.host_argument_size_in_bytes),
            host_output_bytes=int(m.host_output_size_in_bytes),
            host_alias_bytes=int(m.host_alias_size_in_bytes),
            host_temp_bytes=int(m.host_temp_size_in_bytes),
            host_generated_code_bytes=int(m.host_generated_code_size_in_bytes),
            peak_bytes=None if peak is None else int(peak),
            flops=cost.get("flops"),
            bytes_accessed=cost.get("bytes accessed"),
            transcendentals=cost.get("transcendentals"),
            cost_has_loops=_has_loops(compiled),
            lower_seconds=lower_seconds,
            compile_seconds=compile_seconds,
            platform=devices[0].platform,
            device_kind=devices[0].device_kind,
            num_devices=len(devices),
        )


def _cost(compiled: jax.stages.Compiled) -> dict[str, float]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return {k: float(v) for k, v in (cost or {}).items()
            if k in ("flops", "bytes accessed", "transcendentals")}


def _has_loops(compiled: jax.stages.Compiled) -> bool:
    try:
        return " while(" in compiled.as_text()
    except Exception:  # a backend without HLO text: say nothing is known to be missing
        return False


def _devices(compiled: jax.stages.Compiled) -> list[jax.Device]:
    for sharding in jax.tree.leaves(compiled.input_shardings):
        return sorted(sharding.device_set, key=lambda d: d.id)
    for sharding in jax.tree.leaves(compiled.output_shardings):
        return sorted(sharding.device_set, key=lambda d: d.id)
    return [jax.devices()[0]]


def compile_timed(fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """``(compiled, lower_seconds, compile_seconds)``; ``fn`` may already be jitted."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def compiled_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MemoryReport:
    """Compiles ``fn`` for ``args`` (arrays or ShapeDtypeStructs) and reports its memory.

    ``fn`` is wrapped in ``jax.jit`` unless it is already jitted (pass
    ``jax.jit(f, donate_argnums=...)`` to measure donation). Nothing is executed, and with
    ShapeDtypeStructs nothing is allocated. The byte fields equal those of
    ``jax.jit(fn).lower(*args, **kwargs).compile().memory_analysis()``.
    """
    compiled, lower_s, compile_s = compile_timed(fn, *args, **kwargs)
    return MemoryReport.from_compiled(compiled, lower_seconds=lower_s, compile_seconds=compile_s)
