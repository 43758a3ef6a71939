"""From a configuration to its :class:`~jaxmem.program.Program`, by task.

Example:
  >>> from jaxmem import Config
  >>> from jaxmem.build import build_program
  >>> build_program(Config(task="inference")).carried_args  # a forward pass replaces nothing
  0
"""

from __future__ import annotations

from collections.abc import Callable

from jaxmem.config import Config
from jaxmem.inference import build_decode_program, build_inference_program
from jaxmem.program import Program
from jaxmem.setup import Setup, as_setup
from jaxmem.step import build_train_program

BUILDERS: dict[str, Callable[[Setup], Program]] = {
    "train": build_train_program,
    "inference": build_inference_program,
    "decode": build_decode_program,
}


def build_program(config: Config | Setup) -> Program:
    """Everything needed to compile (and run) a configuration's step; allocates nothing. A
    Config is resolved first (:func:`jaxmem.setup.resolve`); the devices are always the
    configuration's target's."""
    setup = as_setup(config)
    return BUILDERS[setup.config.task](setup)
