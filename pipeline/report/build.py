"""``make report``: every artefact of papers A, B and C from the committed CSVs and ``conf/paper/``
only (no model is loaded), as Markdown (``results/REPORT.md``) and a self-contained HTML file with
the figures embedded (``results/report.html``).

Per artefact, in the papers' order: the verdict and the rule that computed it, the setting read
off the rows (model, data, commit, device), the command and hardware, our table, the published
entries beside it (verified or recalled), and the figures. A table that was never written reads
"not run"; nothing disappears silently.
"""

from __future__ import annotations

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
from pipeline.report.costs import recorded_cost
from pipeline.report.headline import headline_table
from pipeline.report.html import slug, to_html
from pipeline.report.registry import JUDGE_ERRORS, judge
from pipeline.report.rules import RULES
from pipeline.report.stale import check_folder, summary

PAPERS = {"A": "Massive Activations (Sun et al. 2024)", "B": "The Super Weight (Yu et al. 2024)",
          "C": "Birth of a Transformer (Bietti et al. 2023)", "beyond": "Beyond the papers"}
MAX_ROWS = 12
MAX_FINAL_ROWS = 48   # one row per run: seven variants x three seeds fit


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
    debug = debug_runs(runs)
    if debug and broken is not None:
        broken["debug"] = (f"{len(debug)} of the runs here are debug runs or tiny random models ({debug[0]}): "
                           "their sizes decide nothing; a verdict needs real runs")
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


def debug_runs(runs: Path) -> list[str]:
    """The shards under ``runs`` made by a debug run (``debug=...``) or on a tiny random model."""
    import json

    found = []
    for manifest in sorted(runs.glob("*/manifest.json")) if runs.is_dir() else ():
        try:
            cfg = json.loads(manifest.read_text()).get("config") or {}
        except (OSError, ValueError):
            continue
        if (cfg.get("run") or {}).get("debug") or (cfg.get("model") or {}).get("source") == "tiny":
            found.append(manifest.parent.name)
    return found


def verdict(a: Artefact, tables: dict[str, pd.DataFrame], broken: dict[str, str] | None = None) -> tuple[str, str]:
    if broken:
        return "not judged", "; ".join(broken.values())
    if a.table not in tables:
        return "not run here", f"needs {a.hardware}: {a.command}"
    try:
        return judge(a.rule, tables, a.table)
    except JUDGE_ERRORS as err:
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


RUN_KEYS = ("model", "seed", "label", "condition")  # what tells one run (or variant) of an artefact from another


def shown(a: Artefact, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows the report prints, and what they are: for a table over training steps, the last
    step of each run (model, seed, variant label, condition): the first rows of a curve were its
    start (for GPT-2: evaluation columns empty between evaluations); else the first rows."""
    cols = [c for c in a.columns if c in df] or [c for c in df.columns if c not in PROVENANCE_COLUMNS or c == "model"]
    steps = pd.to_numeric(df["step"], errors="coerce") if "step" in df else None
    if steps is not None and steps.notna().all() and steps.nunique() > 1:
        keys = [c for c in RUN_KEYS if c in df and df[c].nunique() > 1]
        last = steps.groupby([df[k] for k in keys]).transform("max") if keys else steps.max()
        final = df[steps == last]
        cols = ["step", *[k for k in keys if k not in cols], *[c for c in cols if c != "step"]]  # a seed shows
        return final[cols].head(MAX_FINAL_ROWS), f"the last step of each run, {len(final)} rows" + (
            f", first {MAX_FINAL_ROWS}" if len(final) > MAX_FINAL_ROWS else "")
    return df[cols].head(MAX_ROWS), f"first {MAX_ROWS} of {len(df)} rows" if len(df) > MAX_ROWS else ""


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
        cost = recorded_cost(root / results_folder(a)) if df is not None else None
        out.append({"a": a, "verdict": v, "why": why, "rule": " ".join((RULES[a.rule].__doc__ or "").split()),
                    "stale": stale, "cost": f"the record cost {cost.describe()}" if cost else "nothing recorded here",
                    "setting": setting(df) if df is not None else "not run",
                    "table": shown(a, df) if df is not None else None,
                    "n_rows": 0 if df is None else len(df), "published": published(a), "figures": figs})
    return out


def _md_table(df: pd.DataFrame) -> str:
    cells = df.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)).astype(str)
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "\n".join("| " + " | ".join(r) + " |" for r in cells.values.tolist())


def markdown(secs: list[dict[str, Any]], root: Path) -> str:
    committed = Path(root).resolve() == (REPO_ROOT / "results").resolve()
    source = ("the committed CSVs under `results/` (the reproduction record)" if committed else
              f"the CSVs under `{root}` (your runs, not the committed record)")
    lines = ["# Report: papers A, B and C, regenerated", "",
             f"Written by `make report` from {source} and the published numbers in "
             "`conf/paper/` (no model is loaded). Each verdict is computed by the rule printed under it; "
             "a published value is tagged verified (checked against the paper or its code) or recalled.", "",
             "## Headline", "", *headline_table(secs, numbers=True), "", "## Contents", ""]
    for paper, name in PAPERS.items():
        lines += [f"- {name if paper == 'beyond' else f'{paper}: {name}'}",
                  *(f"  - [{s['a'].title}](#{slug(s['a'].title)}): {s['verdict']}"
                    for s in secs if s["a"].paper == paper)]
    for paper, name in PAPERS.items():
        lines += ["", f"## {paper}: {name}" if paper != "beyond" else f"## {name}"]
        for s in (s for s in secs if s["a"].paper == paper):
            a = s["a"]
            lines += ["", f"### {a.title}", "",
                      f"- experiment: `{a.experiment}`; verdict: **{s['verdict']}** ({s['why']})",
                      *([f"- caveat: {a.caveat}"] if a.caveat else []),
                      f"- rule: {s['rule']}", f"- setting: {s['setting']}",
                      f"- record: {s['stale'] or 'current (no file that produced it changed since it was recorded)'}",
                      f"- regenerate: `{a.command}` (needs {a.hardware}; {s['cost']}); "
                      f"the paper's setting: "
                      f"`make repro EXP={a.experiment} ARGS='{a.paper_args}'`"]
            if s["table"] is None:
                lines += ["", "not run: no committed rows."]
            else:
                table, what = s["table"]
                lines += ["", f"Ours{f' ({what})' if what else ''}:", "", _md_table(table)]
            if s["published"]:
                lines += ["", "Published:", "", _md_table(pd.DataFrame(s["published"]))]
            lines += ["", *(f"![{f.stem}]({f.relative_to(root)})" for f in s["figures"])]
    return "\n".join(lines) + "\n"


def build(root: Path, md_path: Path, html_path: Path | None) -> list[dict[str, Any]]:
    secs = sections(root)
    md = markdown(secs, md_path.parent)
    write_text(md_path, md)  # a reader (or a killed run) sees the old page or the new one, never half
    if html_path is not None:
        write_text(html_path, to_html(secs, md))
    return secs
