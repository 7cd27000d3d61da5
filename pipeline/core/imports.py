"""The project's import graph, read with ast (every import: module level or lazy), for the import
circle test and for knowing which files a stage's numbers depend on (:mod:`pipeline.report.stale`)."""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(*roots: Path) -> dict[str, set[str]]:
    """{module: the modules of the packages ``roots`` it imports}; ``from a import b`` points at
    ``a.b`` when that is a module, else at ``a``."""
    files = {module_name(f, root): f for root in roots for f in root.rglob("*.py")}
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        targets = []
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
        graph[name] = set()
        for t in targets:
            while t and t not in files:
                t = t.rpartition(".")[0]
            if t and t != name:
                graph[name].add(t)
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt, path + [nxt])):
                return circle
        state[node] = "done"
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def module_file(name: str, roots: list[Path]) -> Path | None:
    """The file of module ``name`` under one of ``roots`` (a package's ``__init__.py``)."""
    for root in roots:
        rel = Path(*name.split(".")[1:]) if name.split(".")[0] == root.name else None
        if rel is None:
            continue
        for cand in (root / rel.with_suffix(".py") if rel.parts else None, root / rel / "__init__.py"):
            if cand is not None and cand.is_file():
                return cand
    return None


def closure(graph: dict[str, set[str]], start: list[str], skip: frozenset[str] = frozenset()) -> set[str]:
    """Every module reachable from ``start`` (included) through imports, and the packages that hold
    them: importing ``a.b.c`` first runs ``a/__init__.py`` and ``a/b/__init__.py`` and whatever
    they import, except the modules in ``skip``, which a package ``__init__`` does not pull in
    (``pipeline/models/__init__.py`` imports every model class the project defines; each decides
    the numbers of its own model's runs only). ``start`` and ordinary imports reach them as usual."""
    packages = {n.rsplit(".", 1)[0] for n in graph if "." in n} & set(graph)
    seen, todo = set(), [m for m in start if m in graph]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            parents = {m.rsplit(".", k)[0] for k in range(1, m.count(".") + 1)} & set(graph)
            follows = graph[m] - skip if m in packages else graph[m]
            todo += sorted((follows | parents) - seen)
    return seen
