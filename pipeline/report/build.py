"""``make report``: every artefact of papers A, B and C from the committed CSVs and ``conf/paper/``
only (no model is loaded), as Markdown (``results/REPORT.md``) and a self-contained HTML file with
the figures embedded (``results/report.html``).

Per artefact, in the papers' order: the verdict and the rule that computed it, the setting read
off the rows (model, data, commit, device), the command and hardware, our table, the published
entries beside it (verified or recalled), and the figures. A table that was never written reads
"not run"; nothing disappears silently.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from pipeline.core.disk import write_text
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CONF_DIR, REPO_ROOT
from pipeline.core.results import PROVENANCE_COLUMNS, read_table
from pipeline.core.store import altered_tables
from pipeline.report.artefacts import ARTEFACTS, Artefact
from pipeline.report.headline import headline_table
from pipeline.report.rules import RULES
from pipeline.report.stale import check_folder, summary

PAPERS = {"A": "Massive Activations (Sun et al. 2024)", "B": "The Super Weight (Yu et al. 2024)",
          "C": "Birth of a Transformer (Bietti et al. 2023)", "beyond": "Beyond the papers"}
MAX_ROWS = 12


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def results_folder(a: Artefact) -> str:
    if a.folder:
        return a.folder
    cfg = OmegaConf.load(CONF_DIR / "experiment" / f"{a.experiment}.yaml")
    return str(OmegaConf.select(cfg, "run.experiment") or a.experiment)


def load_tables(root: Path, a: Artefact, broken: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """The artefact's tables that exist; a table that cannot be read (a corrupt shard) is left out
    and its one-line reason put in ``broken``: one broken artefact never stops the report."""
    folder = root / results_folder(a)
    out = {}
    runs = folder / "runs"
    for shard in sorted(runs.iterdir()) if runs.is_dir() else ():
        for change in altered_tables(shard) if shard.is_dir() and not shard.name.startswith(".") else ():
            if broken is not None:
                broken[f"{shard.name}/{change}"] = (f"the record was changed: runs/{shard.name}/{change} since it "
                                                    "was recorded (its manifest's checksum differs): re-record it, "
                                                    "or restore it with git")
    for t in (a.table, *a.also_needs):
        if t and folder.is_dir():
            try:
                df = read_table(folder, t)
            except (FileNotFoundError, KeyError, pd.errors.EmptyDataError):
                continue
            except PipelineError as err:
                if broken is not None:
                    broken[t] = f"a table could not be read: {err}"
                continue
            if len(df):
                out[t] = df
    return out


def verdict(a: Artefact, tables: dict[str, pd.DataFrame], broken: dict[str, str] | None = None) -> tuple[str, str]:
    if broken:
        return "not judged", "; ".join(broken.values())
    if a.table not in tables:
        return "not run here", f"needs {a.hardware}: {a.command}"
    try:
        return RULES[a.rule](tables)
    except (KeyError, IndexError, ValueError, TypeError) as err:  # a table without what the rule reads
        return "not judged", f"the rule could not read its numbers ({type(err).__name__}: {err})"


def published(a: Artefact) -> list[dict[str, Any]]:
    rows = []
    for paper_file, key in a.published:
        cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "paper" / f"{paper_file}.yaml"), resolve=True)
        for model, entries in (cfg.get("models") or {}).items():
            if key in entries:
                e = entries[key]
                rows.append({"model": model, "quantity": key, "value": str(e.get("value")),
                             "tag": "verified" if e.get("verified") else "recalled", "source": e.get("source", "")})
    return rows


def setting(df: pd.DataFrame) -> str:
    parts = []
    for col, name in (("model", "model"), ("dataset", "data"), ("git_sha", "commit"), ("device", "device")):
        if col in df:
            vals = sorted({str(v) for v in df[col].dropna()})
            parts.append(f"{name} {', '.join(vals[:4])}{' ...' if len(vals) > 4 else ''}")
    return "; ".join(parts)


def shown(a: Artefact, df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in a.columns if c in df] or [c for c in df.columns if c not in PROVENANCE_COLUMNS or c == "model"]
    return df[cols].head(MAX_ROWS)


def sections(root: Path) -> list[dict[str, Any]]:
    """One dict per artefact: everything both renderers need."""
    out = []
    for a in ARTEFACTS:
        broken: dict[str, str] = {}
        tables = load_tables(root, a, broken)
        v, why = verdict(a, tables, broken)
        df = tables.get(a.table)
        figs = sorted((root / results_folder(a) / "figures").glob("*.png")) if df is not None else []
        stale = summary(check_folder(REPO_ROOT, root / results_folder(a))) if df is not None else None
        out.append({"a": a, "verdict": v, "why": why, "rule": " ".join((RULES[a.rule].__doc__ or "").split()),
                    "stale": stale,
                    "setting": setting(df) if df is not None else "not run",
                    "table": shown(a, df) if df is not None else None,
                    "n_rows": 0 if df is None else len(df), "published": published(a), "figures": figs})
    return out


def _md_table(df: pd.DataFrame) -> str:
    cells = df.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)).astype(str)
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(r) + " |" for r in cells.values.tolist())


def markdown(secs: list[dict[str, Any]], root: Path) -> str:
    lines = ["# Report: papers A, B and C, regenerated", "",
             "Written by `make report` from the committed CSVs under `results/` and the published numbers in "
             "`conf/paper/` (no model is loaded). Each verdict is computed by the rule printed under it; "
             "a published value is tagged verified (checked against the paper or its code) or recalled.", "",
             "## Headline", "", *headline_table(secs, numbers=True)]
    for paper, name in PAPERS.items():
        lines += ["", f"## {paper}: {name}" if paper != "beyond" else f"## {name}"]
        for s in (s for s in secs if s["a"].paper == paper):
            a = s["a"]
            lines += ["", f"### {a.title}", "",
                      f"- experiment: `{a.experiment}`; verdict: **{s['verdict']}** ({s['why']})",
                      *([f"- caveat: {a.caveat}"] if a.caveat else []),
                      f"- rule: {s['rule']}", f"- setting: {s['setting']}",
                      f"- record: {s['stale'] or 'current (no file that produced it changed since it was recorded)'}",
                      f"- regenerate: `{a.command}` ({a.hardware}); the paper's setting: "
                      f"`make repro EXP={a.experiment} ARGS='{a.paper_args}'`"]
            if s["table"] is None:
                lines += ["", "not run: no committed rows."]
            else:
                more = f" (first {MAX_ROWS} of {s['n_rows']} rows)" if s["n_rows"] > MAX_ROWS else ""
                lines += ["", f"Ours{more}:", "", _md_table(s["table"])]
            if s["published"]:
                lines += ["", "Published:", "", _md_table(pd.DataFrame(s["published"]))]
            lines += ["", *(f"![{f.stem}]({f.relative_to(root)})" for f in s["figures"])]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Escaped text with Markdown's **bold** and `code` as HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def to_html(secs: list[dict[str, Any]], md: str) -> str:
    """The same content as HTML, figures embedded as data URIs: one file that opens offline."""
    body = []
    for line in md.splitlines():
        if line.startswith("!["):
            path = line[line.index("(") + 1:-1]
            fig = next(f for s in secs for f in s["figures"] if str(f).endswith(path))
            data = base64.b64encode(fig.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(fig.stem)}" src="data:image/png;base64,{data}" '
                        'style="max-width:100%">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [_inline(c.strip()) for c in line.strip("|").split(" | ")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line.startswith("- "):
            body.append(f"<p>&bull; {_inline(line[2:])}</p>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    out, in_table = [], False
    for b in body:  # group consecutive rows into tables
        if b.startswith("<tr>") and not in_table:
            out.append("<table>")
            in_table = True
        elif not b.startswith("<tr>") and in_table:
            out.append("</table>")
            in_table = False
        out.append(b)
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:12px;margin:.5em 0}td{border:1px solid #ccc;padding:2px 6px}"
             "tr:first-child td{font-weight:bold}")
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>Report</title><style>{style}</style></head>"
    return head + "<body>" + "\n".join(out) + "</body></html>\n"


def build(root: Path, md_path: Path, html_path: Path | None) -> list[dict[str, Any]]:
    secs = sections(root)
    md = markdown(secs, md_path.parent)
    write_text(md_path, md)  # a reader (or a killed run) sees the old page or the new one, never half
    if html_path is not None:
        write_text(html_path, to_html(secs, md))
    return secs
