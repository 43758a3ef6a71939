"""Experiment files and ``--set`` values read as YAML, safely and within limits.

* Text is UTF-8, or UTF-16/UTF-32 with a byte-order mark (the encodings YAML allows); anything
  else is refused naming the byte that is not.
* Nesting is at most :data:`MAX_DEPTH` levels, and a document expands (aliases followed) to at
  most :data:`MAX_VALUES` values: an alias "bomb" is refused before it is expanded, and so is an
  alias that contains itself.
* A key given twice in one mapping is refused (YAML says keys are unique; PyYAML would keep the
  last silently).
* Only plain data (mappings, lists, strings, numbers, booleans, null): PyYAML's safe loader.

Every problem is a :class:`~jaxmem.errors.ConfigError` naming the source.

Example:
  >>> from jaxmem import _yaml
  >>> _yaml.load(b"remat: full\\nsweep: {precision: [fp32, bf16-mixed]}", "exp.yaml")
  {'remat': 'full', 'sweep': {'precision': ['fp32', 'bf16-mixed']}}
  >>> _yaml.load("a: 1\\na: 2", "exp.yaml")
  Traceback (most recent call last):
  ...
  jaxmem.errors.ConfigError: exp.yaml: key 'a' appears twice in one mapping at line 2, column 1
"""

from __future__ import annotations

import codecs
from typing import Any

import yaml

from jaxmem.errors import ConfigError

MAX_DEPTH = 64
MAX_VALUES = 100_000

_BOMS = (  # longest first: a UTF-32 LE mark starts like a UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode(data: bytes, source: str) -> str:
    """``data`` as text: by its byte-order mark, else UTF-8."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            body, name = data[len(bom):], encoding
            break
    else:
        body, name = data, "utf-8"
    try:
        return body.decode(name)
    except UnicodeDecodeError as e:
        raise ConfigError(source, f"is not {name.upper()} text (byte {e.start}: "
                          f"{body[e.start:e.start + 1]!r}); experiment files are UTF-8, or "
                          "UTF-16/UTF-32 with a byte-order mark") from None


class _Loader(yaml.SafeLoader):
    """The safe loader, with a depth limit while composing and unique mapping keys."""

    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self.source = source
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(self.source, f"nests deeper than {MAX_DEPTH} levels"
                                  f"{_where(mark)}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class says so
                    break
                if duplicate:
                    raise ConfigError(self.source, f"key {key!r} appears twice in one mapping"
                                      f"{_where(key_node.start_mark)}")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _check_size(root: Any, source: str) -> None:
    """Refuses a node graph that expands to more than MAX_VALUES values, or contains itself
    through an alias (each node's expanded size is counted once, so this is linear)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise ConfigError(source, f"an alias contains itself{_where(node.start_mark)}")
        on_path.add(key)
        total = 1
        children = (node.value if isinstance(node, yaml.SequenceNode)
                    else [c for pair in node.value for c in pair]
                    if isinstance(node, yaml.MappingNode) else [])
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise ConfigError(source, f"expands to more than {MAX_VALUES} values (aliases "
                                  f"followed){_where(node.start_mark)}")
        on_path.discard(key)
        sizes[key] = total
        return total

    size(root)


def load(data: bytes | str, source: str) -> Any:
    """The plain data of one YAML document (None for an empty one).

    Raises:
      ConfigError: undecodable text, malformed YAML, too deep or too large, a duplicate key,
        a tag that is not plain data, or more than one document.
    """
    text = decode(data, source) if isinstance(data, bytes) else data
    loader = _Loader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(source, f"malformed YAML{_where(mark)}: {problem}") from None
    except RecursionError:  # a structure the limits above did not foresee
        raise ConfigError(source, "is nested too deeply to read") from None
    finally:
        loader.dispose()
