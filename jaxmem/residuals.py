"""``jaxmem residuals``: what a configuration keeps for the backward pass, value by value.

Example:
  >>> from jaxmem import Config, RematConfig
  >>> from jaxmem.residuals import residual_report
  >>> residuals, note = residual_report(Config(remat=RematConfig("minimal")))
  >>> sorted({r.what for r in residuals} & {"query", "key", "value", "mlp_pre_act"})
  ['key', 'query', 'value']
"""

from __future__ import annotations

import dataclasses

from jaxmem import analytic
from jaxmem.build import build_program
from jaxmem.config import Config
from jaxmem.errors import ConfigError
from jaxmem.setup import Setup, as_setup, resolve
from jaxmem.units import fmt_bytes


def residual_report(config: Config | Setup) -> tuple[list[analytic.Residual], str]:
    """The saved residuals of a training configuration, each named where possible, and a
    caption note.

    Residuals inside a scan show up as the scan's stacked outputs, without their checkpoint
    names; a scanned stack is therefore listed as the equivalent Python loop (same blocks, same
    policy), and the note gives the scanned program's own total.

    Raises:
      ConfigError: the task has no backward pass.
      RuntimeError: this jax has no residual introspection.
    """
    setup = as_setup(config)
    c = setup.config
    if c.task != "train":
        raise ConfigError("task", "has no backward pass, so nothing is kept for one; residuals "
                          "apply to task train", value=c.task)
    residuals = analytic.program_residuals(build_program(setup))
    if residuals is None:
        raise RuntimeError("this jax version has no residual introspection")
    layers = c.model.layer_count()
    if not layers or not layers[1] or c.remat.nested:
        return residuals, ""
    loop = resolve(dataclasses.replace(c, model=dataclasses.replace(c.model, stack="loop")))
    named = analytic.program_residuals(build_program(loop)) or []
    total = sum(r.bytes for r in residuals)
    return named, (f"scanned stack listed as a loop to name its values; the scanned program "
                   f"itself keeps {fmt_bytes(total)}")
