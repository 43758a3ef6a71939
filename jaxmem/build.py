"""From a configuration to its :class:`~jaxmem.program.Program`, by task.

Example:
  >>> from jaxmem import Config
  >>> from jaxmem.build import build_program
  >>> build_program(Config(task="inference")).carry  # a forward pass replaces nothing
  0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from jaxmem.config import Config
from jaxmem.inference import build_decode_program, build_inference_program
from jaxmem.program import Program
from jaxmem.step import build_train_program

BUILDERS: dict[str, Callable[..., Program]] = {
    "train": build_train_program,
    "inference": build_inference_program,
    "decode": build_decode_program,
}


def build_program(config: Config, devices: Sequence[jax.Device] | None = None) -> Program:
    """Everything needed to compile (and run) ``config``'s step; allocates nothing."""
    return BUILDERS[config.task](config, devices)
