"""The headline of the report: one row per artefact with its verdict. ``results/REPORT.md`` shows it
with the numbers each verdict was computed from; the README shows the same rows without them,
between two marker comments that ``make report`` rewrites (the README never holds a hand-copied
result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.disk import write_text
from pipeline.core.errors import PipelineError
from pipeline.report.registry import VERDICTS

START = "<!-- headline:start (written by make report from results/; do not edit by hand) -->"
END = "<!-- headline:end -->"


def headline_table(secs: list[dict[str, Any]], *, numbers: bool) -> list[str]:
    """The headline as Markdown table lines, from :func:`pipeline.report.build.sections`' output;
    ``numbers``: a column quoting the numbers each verdict read (the report's; the README omits it)."""
    head = "| paper | artefact | verdict |" + (" numbers |" if numbers else "")
    lines = [head, "|---" * head.count(" |") + "|"]
    for s in secs:
        a = s["a"]
        stale = " (stale)" if s.get("stale") else ""
        row = f"| {a.paper} | {a.title} (`{a.experiment}`) | **{s['verdict']}**{stale} |"
        lines.append(row + (f" {s['why']} |" if numbers else ""))
    return lines


def verdict_counts(secs: list[dict[str, Any]]) -> dict[str, int]:
    """How many artefacts got each verdict, in the order of :data:`VERDICTS`."""
    found = [s["verdict"] for s in secs]
    return {v: found.count(v) for v in (*VERDICTS, *sorted(set(found) - set(VERDICTS))) if v in found}


def readme_block(secs: list[dict[str, Any]]) -> str:
    """What the README holds between the markers: the verdict counts and the table."""
    counts = ", ".join(f"{verdict}: {n}" for verdict, n in verdict_counts(secs).items())
    stale = sum(bool(s.get("stale")) for s in secs)
    note = (f" {stale} are stale: the code or config that produced their rows changed since (make record-stale)."
            if stale else "")
    return "\n".join([f"{len(secs)} artefacts ({counts}).{note}", "", *headline_table(secs, numbers=False)])


def _marker_lines(lines: list[str], start: str, end: str) -> tuple[int, int]:
    """The indices of the ``start`` and ``end`` lines: each exactly once, ``start`` first."""
    at = {m: [i for i, line in enumerate(lines) if line.strip() == m] for m in (start, end)}
    if len(at[start]) != 1 or len(at[end]) != 1 or at[start][0] > at[end][0]:
        raise PipelineError(f"expected one line {start!r} followed by one line {end!r} "
                            f"(found {len(at[start])} and {len(at[end])})")
    return at[start][0], at[end][0]


def replace_between_markers(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with the lines between the ``start`` and ``end`` lines replaced by ``block`` (the
    marker lines and everything outside them kept)."""
    lines = text.splitlines(keepends=True)
    i, j = _marker_lines(lines, start, end)
    return "".join(lines[: i + 1]) + block.rstrip("\n") + "\n" + "".join(lines[j:])


def block_between_markers(text: str, start: str = START, end: str = END) -> str:
    """The lines between the ``start`` and ``end`` lines (what :func:`replace_between_markers` wrote)."""
    lines = text.splitlines()
    i, j = _marker_lines(lines, start, end)
    return "\n".join(lines[i + 1: j])


def write_readme_headline(readme: Path, secs: list[dict[str, Any]]) -> bool:
    """Rewrite the README's headline block from ``secs``; True if the file changed."""
    old = readme.read_text()
    new = replace_between_markers(old, readme_block(secs))
    if new != old:
        write_text(readme, new)
    return new != old
