"""``custom``: bring your own NNX model, measured by the same harness.

The experiment names a factory ``package.module:function`` (importable, or a module in the
working directory). jaxmem calls it as ``factory(batch_size=..., **options)`` and expects a
:class:`~jaxmem.models.Workload`. A factory that accepts a ``remat_policy`` argument receives the
experiment's remat policy name (pass it to ``jaxmem.remat.apply``), one that accepts ``dtype`` the
precision policy's compute dtype (pass it to your layers' ``dtype=``). Without them, only
``remat: none`` applies, and the precision policy only casts parameters and inputs.

Example YAML::

    model:
      kind: custom
      factory: my_project.models:make_workload
      options: {width: 1024}
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from jaxmem.errors import ConfigError
from jaxmem.models.base import ModelConfig
from jaxmem.models.workload import BuildOptions, Workload


@ModelConfig.register("custom")
@dataclasses.dataclass(frozen=True)
class CustomConfig(ModelConfig):
    """A user factory and the keyword options passed to it.

    Attributes:
      factory: ``package.module:function`` returning a Workload.
      options: extra keyword arguments for the factory.
    """

    RUNS_USER_CODE: ClassVar[bool] = True

    kind: str = "custom"
    factory: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        module, _, attr = self.factory.partition(":")
        if not module or not attr:
            raise ConfigError("factory", "expected 'package.module:function'", value=self.factory)

    def checkpoint_names(self) -> None:
        return None  # whatever the user's model tags

    def resolve(self) -> Callable[..., Workload]:
        """Imports the factory (the working directory is importable too)."""
        module_name, _, attr = self.factory.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as e:  # ImportError, SyntaxError, sys.exit(), ...
            what = str(e).splitlines()[0] if str(e) else ""
            raise ConfigError("model.factory", f"cannot import module ({type(e).__name__}: "
                              f"{what})", value=self.factory) from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ConfigError("model.factory", f"module {module_name} has no {attr!r}",
                              value=self.factory) from None

    def precheck(self, opts: BuildOptions) -> None:
        """Imports the factory and checks the call the options make, without calling it."""
        self._arguments(self.resolve(), opts)

    def _arguments(self, factory: Callable[..., Workload], opts: BuildOptions
                   ) -> dict[str, Any]:
        """The keyword arguments for ``factory``; ConfigError if its signature refuses them."""
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            raise ConfigError("model.factory", "is not a function jaxmem can call",
                              value=self.factory) from None
        params = signature.parameters
        any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = dict(self.options, batch_size=opts.batch_size)
        policy = opts.remat_policy.name
        if "remat_policy" in params or any_keyword:
            kwargs["remat_policy"] = policy
        elif policy != "none":
            raise ConfigError("remat.policy", f"factory {self.factory} takes no remat_policy "
                              "argument, so only 'none' applies", value=policy)
        if "dtype" in params or any_keyword:
            kwargs["dtype"] = opts.dtype
        try:
            signature.bind(**kwargs)
        except TypeError as e:  # the options do not fit the factory's signature
            raise ConfigError("model.options", f"factory {self.factory} rejected them ({e})",
                              value=self.options) from None
        return kwargs

    def build(self, opts: BuildOptions) -> Workload:
        """Calls the factory; checks it returns a Workload."""
        factory = self.resolve()
        try:
            workload = factory(**self._arguments(factory, opts))  # a failure inside: its row
        except SystemExit as e:  # would end jaxmem without a word
            raise RuntimeError(f"factory {self.factory} called sys.exit({e.code!r})") from None
        if not isinstance(workload, Workload):
            raise ConfigError("model.factory", "must return a jaxmem.models.Workload, returned "
                              f"{type(workload).__name__}", value=self.factory)
        return workload
