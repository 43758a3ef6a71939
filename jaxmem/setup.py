"""A configuration resolved once into the objects every later stage uses: the :class:`Setup`.

Validation (``jaxmem.config``) says a configuration is well formed; resolution turns its names
into objects, once: the target (its devices and the usable memory of one device), the sharding
rules, the precision and remat policies, the freeze patterns, the model's workload, and the mesh.
Program builders, measurement, the notes and the run-mode worker all take a Setup and look
nothing up again. The workload, the mesh and the target's memory are made on first use: asking
for devices starts a backend, which run mode's parent process must never do.

Example:
  >>> from jaxmem import Config, RematConfig
  >>> from jaxmem.setup import resolve
  >>> setup = resolve(Config(remat=RematConfig("full")))
  >>> setup.remat.name, setup.precision.name, setup.target.name, setup.rules.zero
  ('full', 'fp32', 'local', ())
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxmem import analytic, freeze, precision, remat, sharding, targets
from jaxmem.config import Config
from jaxmem.errors import ConfigError, Unsupported
from jaxmem.models.workload import BuildOptions, Workload
from jaxmem.program import abstract_model


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """One configuration, resolved.

    Attributes:
      config: the validated configuration.
      target: where it compiles and runs (``jaxmem.targets``).
      rules: logical axis -> mesh axes (``sharding`` preset with its overrides).
      precision: the precision policy.
      remat: the remat policy.
      param_axes: ``(glob over parameter paths, logical axes)``: the experiment's
        ``sharding.param_axes``, then the model's own table; first match wins.
      freeze_patterns: parameter path patterns to freeze (patterns and presets).
    """

    config: Config
    target: targets.Target
    rules: sharding.Rules
    precision: precision.PrecisionPolicy
    remat: remat.RematPolicy
    param_axes: tuple[tuple[str, sharding.Axes], ...]
    freeze_patterns: tuple[str, ...]

    @property
    def build_options(self) -> BuildOptions:
        """What the experiment decides about the model besides its shape."""
        c = self.config
        return BuildOptions(
            batch_size=c.data.batch_size,
            remat_policy=self.remat,
            remat_every=c.remat.every,
            remat_nested=c.remat.nested,
            dtype=self.precision.compute_dtype,
            mlp_keep=c.inference.mlp_keep(c.task),
        )

    @functools.cached_property
    def workload(self) -> Workload:
        """The model constructor, batch shapes and loss (a custom model's factory runs here,
        once). Raises ConfigError for a factory that cannot be called as configured."""
        return self.config.model.build(self.build_options)

    @functools.cached_property
    def abstract_model(self) -> nnx.Module:
        """The workload's model with ShapeDtypeStructs for arrays (nothing allocated)."""
        return abstract_model(self.workload, self.config.data.seed)

    @functools.cached_property
    def mesh(self) -> Mesh:
        """The ``(data, fsdp, tensor)`` mesh over the target's devices, with the batch split
        and the model's sharding checked. Starts the target's backend.

        Raises:
          ConfigError: the mesh does not fit the devices, or splits what it cannot.
          Unsupported: the model cannot run on the target's platform.
        """
        c = self.config
        mesh = sharding.make_mesh(c.mesh, self.target.devices())
        sharding.check_batch(c.data.batch_size // c.data.microbatches, mesh)
        c.model.check_platform(mesh.devices.flat[0].platform)
        c.model.check_sharding(dict(mesh.shape), self.rules)
        return mesh

    @functools.cached_property
    def memory(self) -> targets.Memory:
        """Usable memory of one device of the target, and its source."""
        return self.target.usable_memory(self.config.measure.mem_fraction)

    @functools.cached_property
    def tagged_names(self) -> frozenset[str]:
        """Checkpoint names the model tags: the model's own list, or (custom models) the
        names found in its traced loss."""
        names = self.config.model.checkpoint_names()
        if names is not None:
            return frozenset(names)
        model = self.abstract_model
        graphdef, state = nnx.split(model)
        workload = self.workload
        jaxpr = jax.make_jaxpr(lambda s, b: workload.loss(nnx.merge(graphdef, s), b))(
            state, dict(workload.batch))
        return frozenset(analytic.checkpoint_names(jaxpr.jaxpr))

    def untagged_names(self) -> tuple[str, ...]:
        """Checkpoint names the remat policy refers to that the model does not tag."""
        if not self.remat.names:
            return ()
        return tuple(n for n in self.remat.names if n not in self.tagged_names)

    def check(self, mode: str, devices: bool | None = None,
              user_code: bool = True) -> None:
        """Bad input that only shows beyond the configuration, raised as ConfigError before
        anything compiles: a factory that cannot be called as configured, freeze patterns
        matching no parameter, checkpoint names the model does not tag, allocator settings,
        a profile or a checkpoint outside their mode, a compile-only target in run mode, and
        (compile mode) a mesh the target's devices cannot hold (``devices``: whether to ask for them
        here; by default in compile mode only). With ``user_code`` False a custom model's code
        is not run here (its factory is imported and its signature checked); what needs it is
        checked where it runs, and a failure there is that row.

        Run mode leaves the devices alone: asking for them would start the accelerator in
        this process, which would then hold memory that the worker's measurement should own.
        The worker checks its own mesh, and a misfit is that point's error row. A model whose
        own code fails (a factory that raises, a model that cannot be traced) is left to its
        row too: that is a result, not bad input.
        """
        c = self.config
        allocator = c.measure.allocator_env()
        if mode == "compile":
            if c.measure.profile is not None:
                raise ConfigError("measure.profile", "profiles a run, so it needs --mode run "
                                  "(or measure.mode: run)", value=c.measure.profile)
            if c.checkpoint.enabled:
                raise ConfigError("checkpoint.enabled", "saves and restores a run's state, so "
                                  "it needs --mode run (or measure.mode: run)", value=True)
            if self.target.family == "gpu":  # the share of a GPU's memory that fits checks
                allocator.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
            if allocator:
                raise ConfigError("measure", "allocator settings apply to --mode run (and "
                                  "mem_fraction to gpu: targets)", value=sorted(allocator))
        elif not self.target.runnable:
            raise ConfigError("target.name", "is compile-only, so only --mode compile applies",
                              value=self.target.name)
        if not user_code and c.model.RUNS_USER_CODE:
            c.model.precheck(self.build_options)
        else:
            self._check_model()
        if devices if devices is not None else mode == "compile":
            try:
                _ = self.mesh
            except Unsupported:  # valid, but not on this backend: that point's row says so
                pass

    def _check_model(self) -> None:
        """Freeze patterns and checkpoint names against the built model (its code runs)."""
        c = self.config
        try:  # the model's own code runs here: the factory, its init, its traced loss
            _ = self.workload
            if self.freeze_patterns:
                _, params, _ = nnx.split(self.abstract_model, nnx.Param, ...)
                freeze.frozen_mask(params, self.freeze_patterns)
            missing = () if c.remat.allow_untagged else self.untagged_names()
        except ConfigError:
            raise
        except Exception:  # noqa: S110  (the model's own code fails: that row says why)
            return
        if missing:
            raise ConfigError("remat.policy", f"names checkpoints the model does not tag "
                              f"({', '.join(missing)}); set remat.allow_untagged=true to run it "
                              "anyway", value=c.remat.policy,
                              choices=sorted(self.tagged_names) or ["(the model tags none)"])


def resolve(config: Config) -> Setup:
    """Resolves every name in ``config`` once (nothing is traced, no backend started)."""
    table = tuple((e[0], tuple(e[1:])) for e in config.sharding.param_axes)
    return Setup(
        config=config,
        target=targets.get(config.target.name),
        rules=config.sharding.resolve(),
        precision=precision.get(config.precision.policy),
        remat=remat.get(config.remat.policy),
        param_axes=(*table, *config.model.PARAM_AXES),
        freeze_patterns=config.freeze_patterns() if config.task == "train" else (),
    )


def as_setup(config_or_setup: Config | Setup) -> Setup:
    """A Setup as is; a Config resolved."""
    if isinstance(config_or_setup, Setup):
        return config_or_setup
    return resolve(config_or_setup)
