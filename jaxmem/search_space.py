"""What the planner may change in a configuration: the :class:`SearchSpace`.

An experiment's ``plan:`` section overrides any of the defaults::

    plan:
      remat: [none, full]          # remat policies to try
      microbatches: [1, 4]
      offload: [false]

Each candidate is the experiment's configuration with one choice per dimension; a sharding
preset comes with its mesh over all the target's devices (``tp`` and ``fsdp+tp`` once per
tensor-parallel size in ``tensor`` that divides them). Everything else (the model, the batch,
the optimizer, the target) stays as the experiment says.

Example:
  >>> from jaxmem.search_space import SearchSpace
  >>> s = SearchSpace(remat=("none", "full"), microbatches=(1,))
  >>> [sets for sets in s.meshes(8)][:2]
  [('dp', {'data': 8, 'fsdp': 1, 'tensor': 1}), ('fsdp', {'data': 1, 'fsdp': 8, 'tensor': 1})]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from jaxmem import _convert, optim, precision, remat, sharding
from jaxmem.errors import ConfigError, check_choice, check_positive


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The choices the planner combines.

    Attributes:
      remat: remat policies (a policy naming checkpoints the model does not tag is skipped).
      precision: precision policies.
      sharding: sharding presets, each with its mesh over all the target's devices.
      tensor: tensor-parallel sizes tried by ``tp`` and ``fsdp+tp``.
      microbatches: gradient-accumulation steps per batch.
      state_dtype: optimizer state dtypes.
      offload: whether the optimizer state lives in host memory (TPU and GPU targets).
      verify: how many of the best candidates may be compiled to verify the choice.
    """

    remat: tuple[str, ...] = ("none", "minimal", "dots", "full")
    precision: tuple[str, ...] = ("fp32", "bf16-mixed")
    sharding: tuple[str, ...] = ("dp", "fsdp", "tp", "fsdp+tp")
    tensor: tuple[int, ...] = (2, 4, 8)
    microbatches: tuple[int, ...] = (1, 2, 4, 8)
    state_dtype: tuple[str, ...] = ("auto", "bfloat16")
    offload: tuple[bool, ...] = (False, True)
    verify: int = 2

    def __post_init__(self) -> None:
        _convert.check_types(self)
        for name in ("remat", "precision", "sharding", "tensor", "microbatches", "state_dtype",
                     "offload"):
            if not getattr(self, name):
                raise ConfigError(name, "needs at least one choice", value=[])
        for p in self.remat:
            try:
                remat.get(p)
            except ConfigError:
                raise ConfigError("remat", "unknown remat policy", value=p,
                                  choices=remat.choices()) from None
        for p in self.precision:
            check_choice("precision", p, precision.POLICIES, what="precision policy")
        for p in self.sharding:
            check_choice("sharding", p, sharding.PRESETS, what="sharding preset")
        for d in self.state_dtype:
            check_choice("state_dtype", d, optim.STATE_DTYPES, what="state dtype")
        for n in self.tensor:
            check_positive("tensor", n)
        for n in self.microbatches:
            check_positive("microbatches", n)
        if self.verify < 0:
            raise ConfigError("verify", "must be >= 0", value=self.verify)

    def meshes(self, devices: int) -> Iterator[tuple[str, dict[str, int]]]:
        """``(preset, mesh sizes)`` over ``devices`` devices, for each preset in the space."""
        seen = set()
        for preset in self.sharding:
            rules = sharding.PRESETS[preset]
            sizes = [1] if "tensor" not in {a for _, axes in rules.axes for a in axes} else [
                t for t in self.tensor if devices % t == 0 and 1 < t <= devices]
            for t in sizes:
                rest = devices // t
                outer = "fsdp" if rules.zero else "data"
                mesh = {"data": 1, "fsdp": 1, "tensor": t, outer: rest}
                if rules.zero and rest == 1:
                    continue  # nothing to split the state over
                key = (preset, tuple(mesh.values()))
                if devices == 1 and preset != "dp" or key in seen:
                    continue
                seen.add(key)
                yield preset, mesh

    def choices(self, devices: int, host_memory: bool
                ) -> Iterator[tuple[tuple[str, Any], ...]]:
        """Every candidate as ``(config path, value)`` pairs."""
        offload = self.offload if host_memory else (False,)
        for r, p, (preset, mesh), m, s, o in itertools.product(
                self.remat, self.precision, list(self.meshes(devices)), self.microbatches,
                self.state_dtype, offload):
            yield (("remat.policy", r), ("precision.policy", p), ("sharding.preset", preset),
                   *((f"mesh.{a}", n) for a, n in mesh.items()),
                   ("data.microbatches", m), ("optimizer.state_dtype", s),
                   ("optimizer.offload", o))


def set_line(pairs: tuple[tuple[str, Any], ...]) -> tuple[str, ...]:
    """``--set`` strings for ``(path, value)`` pairs (booleans as YAML writes them)."""
    return tuple(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in pairs)
