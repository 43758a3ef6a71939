"""Dependencies inside jaxmem/ point one way: no import cycle, at module or function level."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxmem"
ROOT = "jaxmem"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _with_parents(name: str, modules: dict[str, Path], importer: str) -> set[str]:
    """``name`` and the packages Python runs first to import it: not the root package (it
    imports everything, and nothing may import it back) nor the importer's own packages (they
    are already running)."""
    out = set()
    parts = name.split(".")
    for i in range(2, len(parts) + 1):
        prefix = ".".join(parts[:i])
        inside = importer == prefix or importer.startswith(prefix + ".")
        if prefix in modules and (prefix == name or not inside):
            out.add(prefix)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the jaxmem modules its imports execute, wherever the import statement is."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == ROOT:
                        targets.add(ROOT)
                    targets |= _with_parents(alias.name, modules, name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                if not (base == ROOT or base.startswith(ROOT + ".")):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        targets |= _with_parents(sub, modules, name)
                    else:
                        targets |= _with_parents(base, modules, name) if base != ROOT else {ROOT}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return [*stack[stack.index(v):], v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "jaxmem.models" in graph and graph["jaxmem.models"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_nothing_imports_the_root_package():
    """``jaxmem/__init__`` imports every module, so a module importing it back is a cycle."""
    graph = import_graph()
    offenders = sorted(m for m, targets in graph.items() if ROOT in targets and m != ROOT)
    assert not offenders
