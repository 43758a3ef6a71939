"""Plain dicts (from YAML or ``--set``) to typed frozen dataclasses and back, with field paths.

Rules, small on purpose:

* A dataclass with a ``PRIMARY`` class attribute accepts a scalar as shorthand for that field
  (``remat: full`` means ``remat: {policy: full}``).
* A dataclass with a ``dispatch`` classmethod picks its concrete subclass from the raw dict
  (``model: {kind: gpt, ...}`` builds a ``GPTConfig``).
* Field types: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``X | None``,
  ``tuple[X, ...]``, ``dict[str, Any]`` and nested dataclasses. Anything else is a bug here.
* Numbers are finite, and integers fit an int32 (sizes beyond that are not sizes a device
  can index): :func:`check_types`, which every section runs first in ``__post_init__``, so a
  section built directly in Python is checked as strictly as one read from YAML.

Every error is a :class:`~jaxmem.errors.ConfigError` whose path is the dotted field path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from jaxmem.errors import ConfigError

_MISSING = dataclasses.MISSING
#: integer fields hold sizes, counts and seeds: at most what an int32 index holds
MAX_INT = 2**31 - 1


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _concrete(cls: type, raw: Any) -> type:
    dispatch = getattr(cls, "dispatch", None)
    return dispatch(raw) if dispatch is not None else cls


def expand(cls: type, raw: Any, path: str) -> dict[str, Any]:
    """``raw`` as a dict for dataclass ``cls``: a scalar becomes ``{cls.PRIMARY: raw}``."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    primary = getattr(cls, "PRIMARY", None)
    if primary is not None:
        return {primary: raw}
    raise ConfigError(path, "expected a mapping of keys to values", value=raw)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, raw: Any, path: str) -> Any:
    """Converts ``raw`` (YAML data) to type ``tp``, raising ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(inner, raw, path)
    if tp is Any:
        return raw
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, raw, path)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        raise ConfigError(path, "expected true or false", value=raw)
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise ConfigError(path, "expected an integer", value=raw)
    if tp is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(raw)
            except ValueError:
                pass
        raise ConfigError(path, "expected a number", value=raw)
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(path, "expected a string", value=raw)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(path, f"expected a list of {_type_name(item_tp)}", value=raw)
        return tuple(convert(item_tp, x, f"{path}[{i}]") for i, x in enumerate(raw))
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(raw, Mapping):
            raise ConfigError(path, "expected a mapping", value=raw)
        return dict(raw)
    raise TypeError(f"jaxmem bug: unsupported config field type {tp!r} at {path}")


def from_dict(cls: type, raw: Any, path: str = "") -> Any:
    """Builds dataclass ``cls`` from YAML data, checking keys, types and ``__post_init__``."""
    data = expand(cls, raw, path)
    try:
        cls = _concrete(cls, data)
    except ConfigError as e:
        raise (e.at(path) if path else e) from None
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(path or "<top>", "unknown key", value=key, choices=sorted(fields))
    hints = _hints(cls)
    kwargs = {}
    for name in fields:
        if name in data:
            sub = f"{path}.{name}" if path else name
            kwargs[name] = convert(hints[name], data[name], sub)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise (e.at(path) if path else e) from None
    except TypeError as e:  # a required field without a default
        raise ConfigError(path or "<top>", str(e)) from None


def check_types(obj: Any) -> None:
    """Raises ConfigError (path: the field) unless every field of dataclass ``obj`` has its
    annotated type: ``bool`` for bool, an ``int`` that is not a bool and fits an int32, a
    finite number for float, a tuple for ``tuple[X, ...]``, and so on."""
    hints = _hints(type(obj))
    for name in _fields(type(obj)):
        _check_value(hints[name], getattr(obj, name), name)


def _check_value(tp: Any, value: Any, path: str) -> None:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        (inner,) = [a for a in args if a is not type(None)]
        _check_value(inner, value, path)
        return
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            raise ConfigError(path, f"expected a {tp.__name__}", value=value)
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, "expected true or false", value=value)
    elif tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(path, "expected an integer", value=value)
        if abs(value) > MAX_INT:
            raise ConfigError(path, f"is out of range (at most {MAX_INT} in size)", value=value)
    elif tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(path, "expected a number", value=value)
        if not math.isfinite(value):
            raise ConfigError(path, "expected a finite number", value=value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, "expected a string", value=value)
    elif origin is tuple:
        if not isinstance(value, tuple):
            raise ConfigError(path, "expected a tuple", value=value)
        item_tp = typing.get_args(tp)[0]
        for i, item in enumerate(value):
            _check_value(item_tp, item, f"{path}[{i}]")
    elif origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(path, "expected a mapping with string keys", value=value)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def canonical_path(cls: type, raw: Mapping[str, Any], path: str, *,
                   section_ok: bool = False) -> str:
    """Checks that ``path`` names a field of ``cls`` and resolves section shorthands.

    ``remat`` becomes ``remat.policy`` (the section's PRIMARY field) unless ``section_ok``, when a
    section path stays as it is (to set the whole section); ``model.d_model`` is looked up in the
    model class that ``raw['model']['kind']`` selects.
    """
    parts = path.split(".")
    if not all(parts):
        raise ConfigError(path, "malformed key path", value=path)
    out: list[str] = []
    node_cls, node_raw = cls, raw
    for part in parts:
        if not dataclasses.is_dataclass(node_cls):
            raise ConfigError(".".join(out), "is a value, not a section: set it whole "
                              "(e.g. model.options={width: 32})", value=path)
        try:
            node_cls = _concrete(node_cls, node_raw)
        except ConfigError as e:
            raise (e.at(".".join(out)) if out else e) from None
        fields = _fields(node_cls)
        where = ".".join(out) or "<top>"
        if part not in fields:
            raise ConfigError(where, "unknown key", value=part, choices=sorted(fields))
        out.append(part)
        tp = _strip_optional(_hints(node_cls)[part])
        sub_raw = node_raw.get(part) if isinstance(node_raw, Mapping) else None
        node_cls = tp
        node_raw = expand(tp, sub_raw, ".".join(out)) if dataclasses.is_dataclass(tp) else None
    if section_ok:
        return ".".join(out)
    while dataclasses.is_dataclass(node_cls):
        primary = getattr(_concrete(node_cls, node_raw or {}), "PRIMARY", None)
        if primary is None:
            raise ConfigError(".".join(out), "is a section, name one of its keys", value=path)
        out.append(primary)
        node_cls = _strip_optional(_hints(_concrete(node_cls, node_raw or {}))[primary])
        node_raw = None
    return ".".join(out)


def is_section(cls: type, raw: Mapping[str, Any], path: str) -> bool:
    """Whether ``path`` (a valid field path) names a dataclass section rather than a value."""
    node_cls: Any = cls
    node_raw: Any = raw
    for part in path.split("."):
        node_cls = _concrete(node_cls, node_raw)
        node_raw = node_raw.get(part) if isinstance(node_raw, Mapping) else None
        node_cls = _strip_optional(_hints(node_cls)[part])
        if dataclasses.is_dataclass(node_cls):
            node_raw = expand(node_cls, node_raw, path)
    return dataclasses.is_dataclass(node_cls)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def get_path(raw: Mapping[str, Any], path: str) -> Any:
    """The value at a canonical dotted ``path`` of YAML-shaped data (None where absent)."""
    node: Any = raw
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def set_path(cls: type, raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the field at ``path`` (a canonical path) set to ``value``."""
    out = dict(raw)
    node_cls: Any = cls
    node = out
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        node_cls = _strip_optional(_hints(_concrete(node_cls, node))[part])
        child = node.get(part)
        node[part] = expand(node_cls, child, ".".join(parts[: i + 1]))
        node = node[part]
    node[parts[-1]] = value
    return out

