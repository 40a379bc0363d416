"""The package's own import graph, read from the source (no import is executed)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "transfer_freezing"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(name: str, top_level_only: bool = False) -> set[str]:
    """Package modules that ``name`` imports (at any depth of the file unless ``top_level_only``)."""
    known = modules()
    path = known[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            if not base_name.startswith(PACKAGE):
                continue
            for alias in node.names:
                candidate = f"{base_name}.{alias.name}"
                found.add(candidate if candidate in known else base_name)
    return {m for m in found if m in known and m != name}


def closure(start: list[str], top_level_only_for: frozenset[str] = frozenset()) -> set[str]:
    """Every package module reachable from ``start`` (``__init__`` files included)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imports(name, top_level_only=name in top_level_only_for))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent __init__ runs too
    return seen


# Modules a stage runs whose late imports cannot change its output bytes: config's late registry
# imports only check names (a freeze mode edit must not recompute spectrograms).
LEAVES = frozenset({f"{PACKAGE}.config"})


def stage_modules(entry: str) -> set[str]:
    """The modules that decide ``tfreeze <stage>``'s outputs: the stage module's import graph.

    The CLI only parses and dispatches, so it is not a dependency (editing help text re-runs
    nothing); ``config`` is, but its late imports (name validation against the registries) are not
    followed.
    """
    return closure([f"{PACKAGE}.{entry}"], LEAVES)


def source_path(name: str) -> str:
    return str(modules()[name].relative_to(SRC.parents[1]))
