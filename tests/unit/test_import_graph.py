"""The package's import graph has no circle (read with ast, every import: module level or lazy), and
the registries of figures and report rules are complete by construction."""

from pathlib import Path

from pipeline.core.imports import find_circle, import_graph

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


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
