"""The package's import graph has no circle (read with ast, every import: module level or lazy), and
the registries of figures and report rules are complete by construction."""

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the modules of the package it imports}; ``from a import b`` points at ``a.b`` when
    that is a module, else at ``a``."""
    files = {module_name(f, root): f for f in root.rglob("*.py")}
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


def test_no_import_circle():
    assert find_circle(import_graph(PIPELINE)) is None


def test_find_circle_sees_one(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # lazy and relative: still a circle
    assert find_circle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_every_paper_module_registers_and_rules_sit_beside_figures():
    import pipeline.figures as figures
    from pipeline.figures.registry import FIGURES
    from pipeline.report import rules
    from pipeline.report.rules import RULES

    figure_modules = {f.stem for f in Path(figures.__file__).parent.glob("*.py")} - {"__init__", "registry"}
    rule_modules = {f.stem for f in Path(rules.__file__).parent.glob("*.py")} - {"__init__"}
    assert {spec.draw.__module__.rpartition(".")[2] for spec in FIGURES} == figure_modules
    assert {fn.__module__.rpartition(".")[2] for fn in RULES.values()} == rule_modules
    assert rule_modules - {"unjudged"} == figure_modules  # a paper's rules and figures: files of one name
