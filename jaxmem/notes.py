"""Caveats about a row's numbers, each decided from what was compiled, never from a model's kind.

Every note is a small function of the measured program; :data:`NOTES` lists them, and a row
carries the text of each that applies.

Example:
  >>> from jaxmem.notes import NOTES
  >>> [n.__name__ for n in NOTES][:2]
  ['cpu_low_precision', 'cpu_offload']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from jaxmem import analytic
from jaxmem.units import fmt_bytes

if TYPE_CHECKING:
    from jaxmem.compiled import MemoryReport
    from jaxmem.program import Program


@dataclasses.dataclass(frozen=True)
class Measured:
    """What the notes look at: the program, XLA's report and the analytic numbers."""

    program: Program
    report: MemoryReport
    analytic: dict[str, Any]

    @property
    def on_cpu(self) -> bool:
        return self.report.platform == "cpu"


def cpu_low_precision(m: Measured) -> str | None:
    setup = m.program.setup
    # int8 weights are dequantised to the compute dtype: nothing is computed in bf16 there
    low = (setup.precision.compute_dtype != jax.numpy.float32
           or setup.config.inference.weights == "bfloat16")
    if m.on_cpu and low:
        return ("XLA:CPU computes bf16/fp16 in f32, so compiled bytes do not show the saving of "
                "lower precision; see analytic.residual_bytes, or compile for a GPU/TPU target")
    return None


def cpu_offload(m: Measured) -> str | None:
    setup = m.program.setup
    if m.on_cpu and (setup.config.optimizer.offload or setup.remat.offloads):
        return ("XLA:CPU's memory analysis does not separate pinned host memory: offloaded bytes "
                "stay in the device columns; compile for a TPU/GPU target to see host_* bytes")
    return None


def cpu_remat_outside_loops(m: Measured) -> str | None:
    """Read from the differentiated program itself, so it holds for custom models too."""
    program = m.program
    if not m.on_cpu or not program.setup.remat.checkpoint or program.objective is None:
        return None
    jaxpr = jax.make_jaxpr(program.objective)(program.params, program.rest, program.batch)
    regions = analytic.remat_outside_loops(jaxpr.jaxpr)
    if not regions:
        return None
    return (f"the step has {regions} checkpointed regions outside any loop (a Python-loop layer "
            "stack); XLA:CPU may schedule their recomputation early, hiding remat savings in "
            "compiled bytes: scan the stack (model.stack=scan) or compile for a TPU/GPU target")


def argument_padding(m: Measured) -> str | None:
    """XLA's argument bytes above the arguments' own bytes on one device: layout padding."""
    own = m.analytic.get("argument_bytes_per_device")
    compiled = m.report.argument_bytes + m.report.host_argument_bytes
    if not own or compiled <= own * 1.001:
        return None
    extra = compiled - own
    return (f"compiled.argument_bytes exceed the arguments' own bytes on one device "
            f"(analytic.argument_bytes_per_device) by {fmt_bytes(extra)} "
            f"(+{100 * extra / own:.1f}%): {m.report.device_kind} lays arrays out in padded "
            "tiles")


def untagged_remat_names(m: Measured) -> str | None:
    missing = m.program.setup.untagged_names()
    if not missing:
        return None
    return (f"remat policy {m.program.setup.remat.name} names checkpoints the model does not "
            f"tag ({', '.join(missing)}): nothing is saved under them, so they are recomputed "
            "as under 'full' (remat.allow_untagged)")


NOTES: tuple[Callable[[Measured], str | None], ...] = (
    cpu_low_precision,
    cpu_offload,
    cpu_remat_outside_loops,
    argument_padding,
    untagged_remat_names,
)


def notes(program: Program, report: MemoryReport, numbers: dict[str, Any]) -> list[str]:
    """The text of every note that applies to this measured program."""
    measured = Measured(program, report, numbers)
    return [text for note in NOTES if (text := note(measured))]
