"""One configuration of an experiment: typed frozen dataclasses, one per concern.

Each section validates itself on construction and raises :class:`~jaxmem.errors.ConfigError`
naming the field, the bad value and the valid choices. Sections whose main field has a
``PRIMARY`` name accept a scalar in YAML: ``remat: full`` is ``remat: {policy: full}``.

Model sections live beside their models (``jaxmem/models/*.py``) and register a ``kind`` here.

Example:
  >>> from jaxmem.config import Config, RematConfig
  >>> Config(remat=RematConfig("full")).remat.policy
  'full'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from jaxmem import optim, precision, remat, targets
from jaxmem.errors import ConfigError, check_choice, check_positive

if TYPE_CHECKING:
    from jaxmem.models.workload import BuildOptions, Workload


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of the model sections; ``kind`` picks the registered subclass."""

    kind: str = "gpt"
    KINDS: ClassVar[dict[str, type[ModelConfig]]] = {}

    @classmethod
    def register(cls, kind: str):
        """Class decorator: makes ``kind: <kind>`` in YAML build the decorated section."""

        def deco(sub: type[ModelConfig]) -> type[ModelConfig]:
            cls.KINDS[kind] = sub
            return sub

        return deco

    @classmethod
    def dispatch(cls, raw: Mapping[str, Any]) -> type[ModelConfig]:
        """The section class for ``raw['kind']`` (default ``gpt``)."""
        import jaxmem.models  # noqa: F401  (registers the built-in kinds)

        kind = raw.get("kind", "gpt")
        check_choice("kind", kind, cls.KINDS, what="model kind")
        return cls.KINDS[kind]

    def build(self, opts: BuildOptions) -> Workload:
        """The model constructor, batch shapes and loss for this section."""
        raise NotImplementedError(f"model kind {self.kind!r} does not define build()")

    def __post_init__(self) -> None:
        if type(self).KINDS.get(self.kind) is not type(self):
            check_choice("kind", self.kind, self.KINDS, what="model kind")
            raise ConfigError("kind", f"does not match {type(self).__name__}", value=self.kind)


def _default_model() -> ModelConfig:
    from jaxmem.models.gpt import GPTConfig

    return GPTConfig()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Synthetic batches of the model's input shapes (no downloads).

    Attributes:
      batch_size: global batch (split over the mesh's data axis).
      seed: seed for parameters and synthetic data.
    """

    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optax optimizer; ``name`` picks it, the other fields are its hyper-parameters."""

    PRIMARY: ClassVar[str] = "name"
    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        check_choice("name", self.name, optim.OPTIMIZERS, what="optimizer")
        check_positive("learning_rate", self.learning_rate)
        for field in ("b1", "b2", "momentum"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ConfigError(field, "must be in [0, 1)", value=value)
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", "must be >= 0", value=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    """Parameter storage dtype and compute dtype, by policy name (``jaxmem.precision``)."""

    PRIMARY: ClassVar[str] = "policy"
    policy: str = "fp32"

    def __post_init__(self) -> None:
        check_choice("policy", self.policy, precision.POLICIES, what="precision policy")


@dataclasses.dataclass(frozen=True)
class RematConfig:
    """Which block intermediates are saved for the backward pass (``jaxmem.remat``)."""

    PRIMARY: ClassVar[str] = "policy"
    policy: str = "none"

    def __post_init__(self) -> None:
        check_choice("policy", self.policy, remat.POLICIES, what="remat policy")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; ``-1`` takes the devices left over.

    Attributes:
      data: data-parallel axis: the batch is split over it, the training state replicated.
    """

    data: int = 1

    def axes(self) -> dict[str, int]:
        """Axis name -> configured size (``-1`` unresolved)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        for name, size in self.axes().items():
            if size != -1 and size <= 0:
                raise ConfigError(name, "must be positive or -1 (the rest)", value=size)


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """The devices to compile and run for (``jaxmem.targets``)."""

    PRIMARY: ClassVar[str] = "name"
    name: str = "local"

    def __post_init__(self) -> None:
        targets.validate(self.name)


MODES = ("compile", "run")


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """How a configuration is measured.

    Attributes:
      mode: ``compile`` (abstract shapes, XLA's analysis; nothing allocated) or ``run`` (real
        arrays in a fresh subprocess: device peaks and step times).
      warmup_steps: untimed steps before timing (run mode).
      steps: timed steps; the median is reported (run mode).
      timeout_s: wall-clock limit of one run-mode subprocess.
    """

    PRIMARY: ClassVar[str] = "mode"
    mode: str = "compile"
    warmup_steps: int = 2
    steps: int = 5
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES, what="mode")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", "must be >= 0", value=self.warmup_steps)
        check_positive("steps", self.steps)
        check_positive("timeout_s", self.timeout_s)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines one measured configuration."""

    model: ModelConfig = dataclasses.field(default_factory=_default_model)
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    precision: PrecisionConfig = PrecisionConfig()
    remat: RematConfig = RematConfig()
    mesh: MeshConfig = MeshConfig()
    target: TargetConfig = TargetConfig()
    measure: MeasureConfig = MeasureConfig()

    def __post_init__(self) -> None:
        data_axis = self.mesh.data
        if data_axis > 0 and self.data.batch_size % data_axis:
            raise ConfigError(
                "data.batch_size", f"must be divisible by mesh.data={data_axis}",
                value=self.data.batch_size,
            )
