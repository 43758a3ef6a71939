"""One configuration of an experiment: typed frozen dataclasses, one per concern.

Each section validates itself on construction and raises :class:`~jaxmem.errors.ConfigError`
naming the field, the bad value and the valid choices. Sections whose main field has a
``PRIMARY`` name accept a scalar in YAML: ``remat: full`` is ``remat: {policy: full}``.

Model sections live beside their models (``jaxmem/models/*.py``) and register a ``kind`` with
:class:`~jaxmem.models.base.ModelConfig`; what a model can and cannot do is asked through its
hooks, never by its kind.

Example:
  >>> from jaxmem.config import Config, RematConfig
  >>> Config(remat=RematConfig("full")).remat.policy
  'full'
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxmem import _convert, optim, precision, remat, sharding, targets
from jaxmem.errors import ConfigError, check_choice, check_positive
from jaxmem.models import GPTConfig, ModelConfig
from jaxmem.models.stack import nested_group_size


def _default_model() -> ModelConfig:
    return GPTConfig()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Synthetic batches of the model's input shapes (no downloads).

    Attributes:
      batch_size: global batch (split over the mesh's data axis).
      microbatches: gradient accumulation: the batch is split into this many microbatches,
        processed one after another by a scan, their gradients averaged into one update.
      seed: seed for parameters and synthetic data.
    """

    batch_size: int = 8
    microbatches: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_positive("batch_size", self.batch_size)
        check_positive("microbatches", self.microbatches)
        if self.batch_size % self.microbatches:
            raise ConfigError("microbatches", f"must divide batch_size={self.batch_size}",
                              value=self.microbatches)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optax optimizer; ``name`` picks it, the other fields are its hyper-parameters.

    Attributes:
      name: ``adamw``, ``sgd``, ``adafactor`` or ``lion``.
      state_dtype: dtype the optimizer state is stored in (``auto``: the parameters' dtype).
      offload: keep the optimizer state in pinned host memory between steps.
    """

    PRIMARY: ClassVar[str] = "name"
    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.0
    nesterov: bool = False
    state_dtype: str = "auto"
    offload: bool = False

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_choice("name", self.name, optim.OPTIMIZERS, what="optimizer")
        check_choice("state_dtype", self.state_dtype, optim.STATE_DTYPES, what="state dtype")
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
        _convert.check_types(self)
        check_choice("policy", self.policy, precision.POLICIES, what="precision policy")


@dataclasses.dataclass(frozen=True)
class RematConfig:
    """Which block intermediates are saved for the backward pass (``jaxmem.remat``).

    Attributes:
      policy: a policy name (``none``, ``dots``, ``minimal``, ``full``, ``save:a+b``, ...).
      every: apply the policy to every k-th block only (the others keep everything).
      nested: nested sqrt(L) remat over a scanned stack (``model.stack: scan``).
      allow_untagged: run a policy that names checkpoints the model does not tag (they are
        then recomputed as under ``full``); the row says which names were missing. Without
        it such a policy is refused as bad input.
    """

    PRIMARY: ClassVar[str] = "policy"
    policy: str = "none"
    every: int = 1
    nested: bool = False
    allow_untagged: bool = False

    def __post_init__(self) -> None:
        _convert.check_types(self)
        try:
            remat.get(self.policy)
        except ConfigError as e:
            raise e.replace(path="policy") from None
        check_positive("every", self.every)


@dataclasses.dataclass(frozen=True)
class FreezeConfig:
    """Parameters that are not trained: no gradient, no optimizer state (``jaxmem.freeze``).

    Attributes:
      patterns: glob patterns over parameter paths (``trunk/embed/*``, ``*/bias``).
      blocks: freeze the first N blocks of the layer stack (Python-loop stacks).
      embeddings: freeze the token and position embeddings.
    """

    patterns: tuple[str, ...] = ()
    blocks: int = 0
    embeddings: bool = False

    def __post_init__(self) -> None:
        _convert.check_types(self)
        if self.blocks < 0:
            raise ConfigError("blocks", "must be >= 0", value=self.blocks)

    @property
    def active(self) -> bool:
        return bool(self.patterns or self.blocks or self.embeddings)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (``jaxmem.sharding``); ``-1`` takes the devices left over.

    The sizes multiply to the target's device count; the default, one device, measures a
    single device of the target.

    Attributes:
      data: data parallelism: the batch is split, the training state replicated.
      fsdp: fully sharded data parallelism: the batch is split, and (with a ``fsdp`` sharding
        preset) parameters, gradients and optimizer state too.
      tensor: tensor (model) parallelism: heads, MLP width and vocabulary split.
    """

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def axes(self) -> dict[str, int]:
        """Axis name -> configured size (``-1`` unresolved)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __post_init__(self) -> None:
        _convert.check_types(self)
        for name, size in self.axes().items():
            if size != -1 and size <= 0:
                raise ConfigError(name, "must be positive or -1 (the rest)", value=size)
        free = [name for name, size in self.axes().items() if size == -1]
        if len(free) > 1:
            raise ConfigError(free[1], f"only one axis can be -1 (already {free[0]})", value=-1)

    def batch_ways(self) -> int | None:
        """Devices the batch is split over (None while an axis is -1)."""
        if -1 in (self.data, self.fsdp):
            return None
        return self.data * self.fsdp


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """How parameters, optimizer state and activations are split over the mesh.

    Attributes:
      preset: ``dp`` (replicate), ``fsdp`` (ZeRO-3: split every parameter and its optimizer
        state over ``mesh.fsdp``), ``tp`` (Megatron: heads, MLP width and vocabulary over
        ``mesh.tensor``) or ``fsdp+tp``.
      rules: overrides of the preset, each ``[logical axis, mesh axis, ...]``; ``[mlp]`` alone
        keeps the MLP width whole.
      param_axes: logical axes for parameters the model does not name, each
        ``[glob over the parameter path, axis, axis, ...]``; a name no rule maps (``_``) keeps
        that dimension whole.
      constrain_activations: constrain the models' activations to the rules' sharding (the
        default); false leaves their layout to XLA's sharding propagation, to measure what
        the constraints are worth.
    """

    PRIMARY: ClassVar[str] = "preset"
    preset: str = "dp"
    rules: tuple[tuple[str, ...], ...] = ()
    param_axes: tuple[tuple[str, ...], ...] = ()
    constrain_activations: bool = True

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_choice("preset", self.preset, sharding.PRESETS, what="sharding preset")
        for i, rule in enumerate(self.rules):
            if not rule:
                raise ConfigError(f"rules[{i}]", "needs a logical axis name", value=list(rule))
            if rule[0] not in sharding.LOGICAL_AXES:
                raise ConfigError(f"rules[{i}]", "unknown logical axis", value=rule[0],
                                  choices=sharding.LOGICAL_AXES)
        for i, entry in enumerate(self.param_axes):
            if len(entry) < 2:
                raise ConfigError(f"param_axes[{i}]", "needs a pattern and at least one axis",
                                  value=list(entry))
        try:
            self.resolve()
        except ConfigError as e:
            raise ConfigError("rules", e.problem, value=e.value, choices=e.choices) from None

    def resolve(self) -> sharding.Rules:
        """The preset's rules with the overrides applied (``jaxmem.setup`` calls this once
        per configuration)."""
        rules = sharding.preset_rules(self.preset, [(r[0], r[1:]) for r in self.rules])
        return dataclasses.replace(rules, activations=self.constrain_activations)


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """The devices to compile and run for (``jaxmem.targets``)."""

    PRIMARY: ClassVar[str] = "name"
    name: str = "local"

    def __post_init__(self) -> None:
        _convert.check_types(self)
        targets.validate(self.name)


TASKS = ("train", "inference", "decode")
WEIGHTS = ("auto", "float32", "bfloat16", "int8")
PRUNING = ("none", "masked", "structured")


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Forward-only tasks: how the weights are stored and pruned, and the decode cache.

    Attributes:
      weights: ``auto`` (the precision policy's parameter dtype), ``float32``, ``bfloat16``, or
        ``int8`` (weight-only, per-channel scales, dequantised on the fly: ``jaxmem.quant``).
      context: decode: KV-cache length per sequence (0: the model's ``seq_len``).
      prune: ``masked`` (magnitude mask beside each MLP weight: no saving) or ``structured``
        (narrower MLPs: a real saving), of ``prune_fraction`` of the MLP weights.
      prune_fraction: fraction pruned, in [0, 1).
    """

    weights: str = "auto"
    context: int = 0
    prune: str = "none"
    prune_fraction: float = 0.5

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_choice("weights", self.weights, WEIGHTS, what="weights")
        check_choice("prune", self.prune, PRUNING, what="pruning")
        if self.context < 0:
            raise ConfigError("context", "must be >= 0 (0: the model's seq_len)",
                              value=self.context)
        if not 0.0 <= self.prune_fraction < 1.0:
            raise ConfigError("prune_fraction", "must be in [0, 1)", value=self.prune_fraction)

    def mlp_keep(self, task: str) -> float:
        """Fraction of MLP width kept by structured pruning (1.0 otherwise)."""
        if task != "train" and self.prune == "structured":
            return 1.0 - self.prune_fraction
        return 1.0


MODES = ("compile", "run")
ALLOCATORS = ("default", "platform", "bfc", "cuda_async")
#: run mode profiles: an XProf trace, a pprof device memory profile, or both
PROFILES = ("trace", "memory", "both")
MAX_TIMEOUT_S = 7 * 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """How a configuration is measured.

    Attributes:
      mode: ``compile`` (abstract shapes, XLA's analysis; nothing allocated) or ``run`` (real
        arrays in a fresh subprocess: device peaks and step times).
      warmup_steps: untimed steps before timing (run mode).
      steps: timed steps; the median is reported (run mode).
      timeout_s: wall-clock limit of one configuration: its run-mode subprocess, or its compile
        in a compile worker (``--workers 0`` compiles in process, without a limit).
      preallocate, mem_fraction, allocator: JAX's GPU/TPU allocator settings for the run-mode
        subprocess (``XLA_PYTHON_CLIENT_PREALLOCATE``, ``..._MEM_FRACTION``, ``..._ALLOCATOR``);
        None leaves the environment's value.
      profile: run mode: ``trace`` (a ``jax.profiler`` trace of ``profile_steps`` more steps,
        for XProf / TensorBoard), ``memory`` (a pprof device memory profile after a step, while
        its inputs and outputs are live), ``both``, or None.
      profile_steps: steps traced after the timed ones (their times are not in the median).
    """

    PRIMARY: ClassVar[str] = "mode"
    mode: str = "compile"
    warmup_steps: int = 2
    steps: int = 5
    timeout_s: float = 900.0
    preallocate: bool | None = None
    mem_fraction: float | None = None
    allocator: str | None = None
    profile: str | None = None
    profile_steps: int = 1

    def allocator_env(self) -> dict[str, str]:
        """The environment variables these settings ask for (unset ones left out)."""
        values = {"XLA_PYTHON_CLIENT_PREALLOCATE": (None if self.preallocate is None
                                                    else str(self.preallocate).lower()),
                  "XLA_PYTHON_CLIENT_MEM_FRACTION": (None if self.mem_fraction is None
                                                     else f"{self.mem_fraction:g}"),
                  "XLA_PYTHON_CLIENT_ALLOCATOR": self.allocator}
        return {k: v for k, v in values.items() if v is not None}

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_choice("mode", self.mode, MODES, what="mode")
        if self.mem_fraction is not None and not 0.0 < self.mem_fraction <= 1.0:
            raise ConfigError("mem_fraction", "must be in (0, 1]", value=self.mem_fraction)
        if self.allocator is not None:
            check_choice("allocator", self.allocator, ALLOCATORS, what="allocator")
        if self.profile is not None:
            check_choice("profile", self.profile, PROFILES, what="profile")
        if self.profile_steps < 1:
            raise ConfigError("profile_steps", "must be >= 1", value=self.profile_steps)
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", "must be >= 0", value=self.warmup_steps)
        check_positive("steps", self.steps)
        check_positive("timeout_s", self.timeout_s)
        if self.timeout_s > MAX_TIMEOUT_S:
            raise ConfigError("timeout_s", f"must be at most {MAX_TIMEOUT_S:g} s",
                              value=self.timeout_s)


RESTORES = ("sharded", "unsharded")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Run mode, training: save the state with orbax after the timed steps, then restore it
    (``jaxmem.checkpoint``), timing both and sampling memory during the restore.

    Attributes:
      enabled: save and restore (shorthand: ``checkpoint: true``).
      restore: ``sharded`` (abstract targets carrying the shardings to restore into: each
        device reads only its own shards) or ``unsharded`` (whole arrays read into host memory,
        then placed: what a restore without target shardings does).
      sharding: the sharding preset to restore into (None: the one it was saved with).
      mesh: the mesh to restore into (None: the one it was saved with), e.g. saved FSDP over
        8 devices, restored ``{data: 2, tensor: 4}`` with ``sharding: tp``.
    """

    PRIMARY: ClassVar[str] = "enabled"
    enabled: bool = False
    restore: str = "sharded"
    sharding: str | None = None
    mesh: MeshConfig | None = None

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_choice("restore", self.restore, RESTORES, what="restore")
        if self.sharding is not None:
            check_choice("sharding", self.sharding, tuple(sharding.PRESETS), what="preset")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines one measured configuration.

    Attributes:
      task: ``train`` (a training step), ``inference`` (a forward pass) or ``decode`` (one
        autoregressive step over a KV cache; ``gpt`` models).
    """

    task: str = "train"
    model: ModelConfig = dataclasses.field(default_factory=_default_model)
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    precision: PrecisionConfig = PrecisionConfig()
    remat: RematConfig = RematConfig()
    freeze: FreezeConfig = FreezeConfig()
    mesh: MeshConfig = MeshConfig()
    sharding: ShardingConfig = ShardingConfig()
    target: TargetConfig = TargetConfig()
    inference: InferenceConfig = InferenceConfig()
    measure: MeasureConfig = MeasureConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    def __post_init__(self) -> None:
        _convert.check_types(self)
        check_choice("task", self.task, TASKS, what="task")
        self._check_task()
        self._check_checkpoint()
        self._check_remat()
        self._check_freeze()
        ways = self.mesh.batch_ways()
        if ways and self.data.batch_size % ways:
            raise ConfigError("data.batch_size", f"must be divisible by mesh.data x mesh.fsdp "
                              f"= {ways}", value=self.data.batch_size)
        for axis in sharding.PRESETS[self.sharding.preset].zero:
            if getattr(self.mesh, axis) == 1:
                raise ConfigError("sharding.preset", f"splits the training state over "
                                  f"mesh.{axis}, which has size 1; set mesh.{axis} (-1: all "
                                  "devices)", value=self.sharding.preset)

    def _check_remat(self) -> None:
        """Combinations of remat settings and model that cannot work together."""
        r, model = self.remat, self.model
        names = model.checkpoint_names()
        policy = remat.get(r.policy)
        if names is not None and policy.names and not r.allow_untagged:
            unknown = [n for n in policy.names if n not in names]
            if unknown:
                raise ConfigError("remat.policy", f"names checkpoints model kind {model.kind!r} "
                                  f"does not tag ({', '.join(unknown)})", value=r.policy,
                                  choices=names or ["(this model tags none)"])
        layers = model.layer_count()
        if layers is None:
            if r.every != 1 or r.nested:
                raise ConfigError("remat.every" if r.every != 1 else "remat.nested",
                                  f"needs a built-in model; model kind {model.kind!r} applies "
                                  "remat itself", value=r.every if r.every != 1 else r.nested)
            return
        count, scanned = layers
        if r.nested:
            if not scanned:
                raise ConfigError("remat.nested", "needs a scanned stack (model.stack: scan)",
                                  value=True)
            if nested_group_size(count) is None:
                raise ConfigError("remat.nested", f"needs a layer count with a divisor between "
                                  f"1 and itself; model has {count}", value=True)
            if r.every != 1:
                raise ConfigError("remat.every", "cannot be combined with remat.nested",
                                  value=r.every)
        if scanned and count % r.every:
            raise ConfigError("remat.every", f"must divide the {count} scanned layers",
                              value=r.every)

    def _check_freeze(self) -> None:
        """Freeze presets the model does not have (patterns are checked against the model's
        parameters when the configuration is resolved: ``jaxmem.setup``)."""
        self.freeze_patterns()

    def freeze_patterns(self) -> tuple[str, ...]:
        """Every parameter path pattern to freeze: ``freeze.patterns`` and the presets."""
        f = self.freeze
        return (*f.patterns, *self.model.freeze_patterns(f.blocks, f.embeddings))

    def restore_config(self) -> Config:
        """This configuration with the sharding and mesh ``checkpoint`` restores into."""
        c = self.checkpoint
        return dataclasses.replace(
            self, checkpoint=CheckpointConfig(),
            sharding=(self.sharding if c.sharding is None
                      else dataclasses.replace(self.sharding, preset=c.sharding)),
            mesh=self.mesh if c.mesh is None else c.mesh)

    def _check_checkpoint(self) -> None:
        c = self.checkpoint
        if c == CheckpointConfig():
            return
        if not c.enabled:
            raise ConfigError("checkpoint.enabled", "is false, so the other checkpoint "
                              "settings do nothing; set checkpoint.enabled=true", value=False)
        if self.task != "train":
            raise ConfigError("checkpoint", "saves the training state: needs task train",
                              value=self.task)
        try:
            self.restore_config()
        except ConfigError as e:
            raise ConfigError("checkpoint", f"cannot restore into that sharding or mesh: {e}",
                              value={"sharding": c.sharding,
                                     "mesh": c.mesh and c.mesh.axes()}) from None

    def _check_task(self) -> None:
        """Settings that only make sense for some tasks, and tasks the model cannot do."""
        if self.task == "train":
            if self.inference != InferenceConfig():
                raise ConfigError("inference", "applies to task inference or decode",
                                  value="task=train")
            return
        training_only = [("remat", self.remat != RematConfig()),
                         ("freeze", self.freeze != FreezeConfig()),
                         ("data.microbatches", self.data.microbatches != 1)]
        for field, set_ in training_only:
            if set_:
                raise ConfigError(field, f"applies to task train, not {self.task}",
                                  value=self.task)
        self.model.check_task(self.task, self.inference)
