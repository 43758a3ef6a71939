"""Experiments: a base configuration, overrides, and a sweep grid over config paths.

YAML layout::

    name: quickstart
    description: small GPT, remat x precision
    model: {kind: gpt, num_layers: 4, d_model: 256}
    data: {batch_size: 16}
    remat: none                # shorthand for remat: {policy: none}
    sweep:
      remat: [none, dots, full]
      precision: [fp32, bf16-mixed]

Every grid point is validated before anything runs; each has a readable name built from the
sweep keys as written (``remat=full,precision=bf16-mixed``). A sweep value that is a mapping is
merged into its section: ``remat: [{policy: full}, {policy: full, every: 2}]`` gives points
named ``remat[policy=full]`` and ``remat[policy=full every=2]``. The sweep key ``cases`` lists
points that set several keys together (zipped, not crossed with each other):
``cases: [{sharding: dp, mesh: {data: -1}}, {sharding: fsdp, mesh: {fsdp: -1}}]``.

Example:
  >>> from jaxmem import Experiment
  >>> exp = Experiment.from_dict({"name": "demo", "sweep": {"remat": ["none", "full"]}})
  >>> [p.name for p in exp.grid()]
  ['remat=none', 'remat=full']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jaxmem import _convert, _yaml
from jaxmem.config import Config
from jaxmem.errors import ConfigError
from jaxmem.search_space import SearchSpace

TOP_LEVEL_KEYS = ("name", "description", "sweep", "plan")
#: limits on what an experiment file may ask for (bad input beyond them)
MAX_FILE_BYTES = 2**20
MAX_POINTS = 10_000
MAX_NAME = 128
_NAME = re.compile(rf"^[A-Za-z0-9_][A-Za-z0-9_.+=,\-]{{0,{MAX_NAME - 1}}}$")
#: sweep key whose values each set several config paths at once (zipped, not crossed)
CASES = "cases"


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One configuration of a sweep.

    Attributes:
      index: position in the grid (0 is the baseline that deltas are taken against).
      name: ``key=value`` pairs of the swept keys, or ``base`` without a sweep.
      config: the validated configuration.
    """

    index: int
    name: str
    config: Config


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named base configuration and a sweep over config paths.

    Attributes:
      name: experiment name (used in result rows and default output folders).
      config: the base configuration.
      sweep: config path as written (``remat``, ``model.num_layers``) -> values, in order.
      description: free text.
      plan: what ``jaxmem plan`` may change (the ``plan:`` section; defaults otherwise).
    """

    name: str
    config: Config = Config()
    sweep: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    description: str = ""
    plan: SearchSpace = SearchSpace()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Experiment:
        """Loads ``path`` and applies ``--set``-style ``key=value`` overrides.

        Raises:
          ConfigError: missing file, malformed YAML, unknown keys, bad values or overrides.
        """
        try:
            path = os.fspath(path)
        except TypeError:
            raise ConfigError("path", "expected a file path", value=path) from None
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(path, "no such experiment file") from None
        except IsADirectoryError:
            raise ConfigError(path, "is a directory, not an experiment file") from None
        except OSError as e:
            raise ConfigError(path, f"cannot be read ({e.strerror or type(e).__name__})") from None
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(path, f"is larger than {MAX_FILE_BYTES // 2**20} MiB; an "
                              "experiment file is a few lines of YAML")
        raw = _yaml.load(data, path)
        if raw is None:
            raise ConfigError(path, "is empty: an experiment needs at least its model, e.g. "
                              "model: {kind: gpt}")
        if not isinstance(raw, Mapping):
            raise ConfigError(path, "expected a mapping at the top level", value=raw)
        raw = dict(raw)
        raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        return cls.from_dict(raw, overrides)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> Experiment:
        """Builds an experiment from YAML-shaped data plus ``key=value`` overrides.

        Raises:
          ConfigError: anything that is not a valid experiment.
        """
        if not isinstance(raw, Mapping):
            raise ConfigError("<top>", "expected a mapping of sections", value=raw)
        if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError("overrides", "expected a list of KEY=VALUE strings, as in "
                              "['remat=full']", value=overrides)
        raw = dict(raw)
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError("<top>", "keys are section names", value=key)
        name = raw.pop("name", "experiment")
        description = raw.pop("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise ConfigError("description", "expected a string", value=description)
        sweep_raw = raw.pop("sweep", None)
        if sweep_raw is None:
            sweep_raw = {}
        if not isinstance(sweep_raw, Mapping):
            raise ConfigError("sweep", "expected a mapping of config paths to lists",
                              value=sweep_raw)
        _check_sweep_shape(sweep_raw)
        plan_raw = raw.pop("plan", None)
        plan = SearchSpace() if plan_raw is None else _convert.from_dict(SearchSpace, plan_raw,
                                                                         "plan")
        config_keys = [f.name for f in dataclasses.fields(Config)]
        for key in raw:
            if key not in config_keys:
                raise ConfigError("<top>", "unknown key", value=key,
                                  choices=sorted([*config_keys, *TOP_LEVEL_KEYS]))
        sweep = dict(sweep_raw)
        for item in overrides:
            key, value = parse_override(item)
            if key == "sweep" or key.startswith("sweep."):
                sweep_key = key.removeprefix("sweep.")
                if not sweep_key or sweep_key == "sweep":
                    raise ConfigError("--set", "name a swept key, as in sweep.remat=[none,full]",
                                      value=item)
                sweep[sweep_key] = value
                _check_sweep_shape({sweep_key: value})
            elif key == "name":
                name = value
            else:
                path = _convert.canonical_path(Config, raw, key)
                raw = _convert.set_path(Config, raw, path, value)
                # an override pins the key: drop any sweep over the same field or its section
                sweep = {k: v for k, v in sweep.items()
                         if k == CASES or not _same_field(raw, k, v, path)}
                if CASES in sweep:
                    sweep[CASES] = [{k: v for k, v in case.items()
                                     if not _same_field(raw, k, [v], path)}
                                    for case in sweep[CASES]]
        check_name(name)
        config = _convert.from_dict(Config, raw)
        exp = cls(name=str(name), config=config, sweep=_check_sweep(sweep, raw),
                  description=str(description), plan=plan)
        exp.grid()  # validates every point now, before anything runs
        return exp

    def to_dict(self) -> dict[str, Any]:
        """YAML-shaped data that :meth:`from_dict` reads back to an equal experiment."""
        out = {"name": self.name, "description": self.description}
        out.update(_convert.to_dict(self.config))
        out["sweep"] = {k: list(v) for k, v in self.sweep.items()}
        if self.plan != SearchSpace():
            out["plan"] = _convert.to_dict(self.plan)
        return out

    def grid(self) -> list[GridPoint]:
        """The Cartesian product of the sweep values, each point validated."""
        base = _convert.to_dict(self.config)
        if not self.sweep:
            return [GridPoint(0, "base", self.config)]
        keys = list(self.sweep)
        points = []
        seen: dict[str, str] = {}  # the configuration as JSON -> the first point's name
        for index, values in enumerate(itertools.product(*(self.sweep[k] for k in keys))):
            raw = base
            names = []
            for key, value in zip(keys, values, strict=True):
                # cases: [{sharding: fsdp, mesh: {fsdp: -1}}, ...] sets several keys at once
                pairs = value.items() if key == CASES else [(key, value)]
                for k, v in pairs:
                    raw = _apply(raw, k, v)
                    names.append(f"{k}[{_label(v)}]" if isinstance(v, Mapping)
                                 else f"{k}={_label(v)}")
            name = ",".join(names)
            # e.g. model.options[width=16]: a dict-valued field is set whole, not merged
            try:
                config = _convert.from_dict(Config, raw)
            except ConfigError as e:
                raise e.replace(context=f"in sweep point {name}") from None
            same = json.dumps(_convert.to_dict(config), sort_keys=True, default=str)
            if same in seen:
                raise ConfigError("sweep", f"points {seen[same]} and {name} are the same "
                                  "configuration; list each value once")
            seen[same] = name
            points.append(GridPoint(index, name, config))
        return points


def _apply(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``raw`` with sweep ``key`` set to ``value``; a mapping is merged into its section
    (``remat: [{policy: full, every: 2}]``), or sets a dict-valued field whole."""
    section = _convert.canonical_path(Config, raw, key, section_ok=True)
    if isinstance(value, Mapping) and _convert.is_section(Config, raw, section):
        for field, v in value.items():
            path = _convert.canonical_path(Config, raw, f"{section}.{field}",
                                           section_ok=isinstance(v, Mapping))
            raw = _convert.set_path(Config, raw, path, v)
        return raw
    path = section if isinstance(value, Mapping) else _convert.canonical_path(Config, raw, key)
    return _convert.set_path(Config, raw, path, value)


def _same_field(raw: Mapping[str, Any], sweep_key: str, values: Any, path: str) -> bool:
    """Whether pinning ``path`` overrides the sweep over ``sweep_key`` (a sweep of whole
    sections is overridden by any of the section's fields)."""
    sections = isinstance(values, (list, tuple)) and any(isinstance(v, Mapping) for v in values)
    swept = _convert.canonical_path(Config, raw, sweep_key, section_ok=sections)
    return path == swept or path.startswith(swept + ".")


def check_name(name: Any) -> None:
    """Raises ConfigError unless ``name`` can name a results folder (``runs/<name>``)."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError("name", "expected a folder name: letters, digits and . _ - + = , "
                          f"(at most {MAX_NAME} characters, not '.' or '..'); set it with "
                          "--set name=...", value=name)


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed)``; the value is parsed as YAML (``4``, ``[a, b]``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--set", "expected KEY=VALUE, as in remat=full", value=item)
    if not text.strip():
        return key, ""
    try:
        return key, _yaml.load(text, f"--set {key}")
    except ConfigError as e:
        raise e.replace(problem=f"value is not valid YAML ({e.problem})") from None


def _check_sweep_shape(sweep: Mapping[str, Any]) -> None:
    """Keys are strings, values non-empty lists, cases mappings; the grid is not too large."""
    points = 1
    for key, values in sweep.items():
        if not isinstance(key, str) or not key:
            raise ConfigError("sweep", "keys are config paths, as in remat or model.d_model",
                              value=key)
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"sweep.{key}", "expected a non-empty list of values", value=values)
        if key == CASES:
            for i, case in enumerate(values):
                if not isinstance(case, Mapping) or not case or not all(
                        isinstance(k, str) for k in case):
                    raise ConfigError(f"sweep.{CASES}[{i}]", "expected a mapping of config "
                                      "paths to values", value=case)
        points *= len(values)
        if points > MAX_POINTS:
            raise ConfigError("sweep", f"has more than {MAX_POINTS} points (the product of "
                              "its lists' lengths); split it into several experiments")


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _check_sweep(sweep: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    _check_sweep_shape(sweep)
    out: dict[str, tuple[Any, ...]] = {}
    seen: dict[str, str] = {}  # canonical path (a section when a whole one is swept) -> key

    def claim(claimed: dict[str, str], path: str, key: str) -> None:
        for other, other_key in claimed.items():
            if _overlap(path, other):
                raise ConfigError(f"sweep.{key}", f"sweeps the same field as "
                                  f"sweep.{other_key}", value=path)
        claimed[path] = key

    for key, values in sweep.items():
        if key == CASES:
            continue
        sections = any(isinstance(v, Mapping) for v in values)
        try:
            path = _convert.canonical_path(Config, raw, key, section_ok=sections)
        except ConfigError as e:
            raise e.replace(path=f"sweep.{key}") from None
        claim(seen, path, key)
        out[key] = tuple(values)
    for i, case in enumerate(sweep.get(CASES, ())):
        in_case = dict(seen)  # a case may not set what the sweep or the case already does
        for k, v in case.items():
            try:
                path = _convert.canonical_path(Config, raw, k,
                                               section_ok=isinstance(v, Mapping))
            except ConfigError as e:
                raise e.replace(path=f"sweep.{CASES}[{i}].{k}") from None
            claim(in_case, path, f"{CASES}[{i}].{k}")
        out[CASES] = tuple(sweep[CASES])
    return out


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "x".join(_label(v) for v in value)
    if isinstance(value, Mapping):
        return " ".join(f"{k}={_label(v)}" for k, v in value.items()) or "base"
    return str(value)

