"""The on-disk layout of the reproduction record, safe for many writers on a shared filesystem.

::

    results/<experiment>/
      runs/<key>/<table>.csv       one shard per run: every row one job wrote, one setting
      runs/<key>/manifest.json     that run's manifest, committed together with its tables
      runs/.partial-<key>.<host>.<pid>.<id>/   one job's run still going, or killed: adopted and
                                   resumed by the next job of the same key once its owner is gone
      <table>.csv                  a merged view of every committed shard (rebuilt; never the truth)

``<key>`` names the setting: model, dataset, seed and a hash of the resolved setting. A job writes
only inside its own staging folder, unique to the job (no lock is needed, so NFS, where ``flock``
is unreliable, is safe), and commits by renaming that folder into place: its tables and manifest
become visible together or not at all. Two live jobs of one setting (the same command twice, a
requeued SLURM job while the old one still runs) each stage apart; the later commit replaces the
earlier one whole, never a mix. A killed job's folder is adopted by the next job of its setting
(:func:`adopt_abandoned`): on this host once its process is gone, from another host once it has
not been written for ``ABANDONED_AFTER_S``, if its rows come from the same code; one that no
job resumes within ``GC_AFTER_S`` is removed (:func:`collect_abandoned`). A re-run of the same
setting replaces exactly its own shard; another setting (a sweep over ``seq_len``, a dtype) lands
beside it. Readers merge the committed shards; a shard that does not parse cleanly is refused
with one line naming it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import uuid
from pathlib import Path

import pandas as pd

from pipeline.core.disk import HOST as _HOST
from pipeline.core.disk import fsync_dir
from pipeline.core.errors import PipelineError

RUNS = "runs"
PARTIAL = ".partial-"
ABANDONED_AFTER_S = 15 * 60  # another host's staging folder untouched this long: its job is gone
GC_AFTER_S = 14 * 24 * 3600  # an abandoned staging folder nobody resumed in two weeks is removed


def swap_in(staged: Path, final: Path) -> None:
    """Make the folder ``staged`` visible as ``final`` (replacing an older ``final``): readers
    see the old run, nothing, or the new run, never a mix. An interrupted swap leaves the old
    run in ``.old-*``, which :func:`clean_stale` puts back."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}.{_HOST}.{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(staged, final)
    except BaseException:  # Ctrl-C or an error between the two renames: put the old run back
        if old is not None and not final.exists():
            os.replace(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_name(key: str) -> str:
    """This job's own staging folder name for setting ``key``."""
    return f"{PARTIAL}{key}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _abandoned(folder: Path, now: float) -> bool:
    """Whether no live job owns a staging folder (an old-style ``.partial-<key>`` has no owner)."""
    parts = folder.name.rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return True
    host, pid = parts[1], int(parts[2])
    if host == _HOST:
        return not _pid_alive(pid)
    try:
        last = max([folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())])
    except FileNotFoundError:  # committed or adopted meanwhile
        return False
    return now - last > ABANDONED_AFTER_S


def adopt_abandoned(runs: Path, key: str, mine: Path, code: str) -> bool:
    """Take over a killed job's staging folder of setting ``key`` by renaming it to ``mine``
    (atomic: of two jobs racing for it, one gets it and the other starts afresh). True if one was
    adopted: its finished conditions are then kept, not computed again. Rows written by other
    code (another git sha than ``code``) are not kept: a run's rows all come from one commit."""
    import time

    if not runs.is_dir():
        return False
    now = time.time()
    for folder in sorted(runs.glob(f"{PARTIAL}{key}*")):
        rest = folder.name[len(PARTIAL) + len(key):]
        if folder.is_dir() and rest[:1] in ("", ".") and _abandoned(folder, now):
            try:
                os.rename(folder, mine)
            except (FileNotFoundError, OSError):
                continue
            shas = {sha for t in mine.glob("*.csv") for sha in read_shard(t).get("git_sha", [])}
            if shas - {code}:
                print(f"[results] a killed run of this setting (code {', '.join(sorted(shas))}) is not resumed: "
                      f"the code is {code} now, so its rows are computed again", flush=True)
                shutil.rmtree(mine, ignore_errors=True)
                return False
            return True
    return False


def collect_abandoned(runs: Path, older_than_s: float = GC_AFTER_S) -> list[str]:
    """Remove staging folders that no live job owns and that nobody has resumed for
    ``older_than_s`` (a killed run of a setting never run again); returns their names."""
    import time

    now, removed = time.time(), []
    for folder in runs.glob(f"{PARTIAL}*") if runs.is_dir() else ():
        try:
            idle = now - max([folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())])
        except (FileNotFoundError, NotADirectoryError):
            continue
        if idle > older_than_s and _abandoned(folder, now):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_temps(runs: Path) -> list[Path]:
    """Temp files inside each run folder. Another job may rename its ``.partial-<key>`` folder
    (its commit) between our listing and our scan: a folder that vanished is skipped (a glob over
    ``*/.*.tmp`` raised FileNotFoundError then, seen with 16 concurrent jobs)."""
    found: list[Path] = []
    for run in runs.iterdir() if runs.is_dir() else ():
        try:
            found += [f for f in run.iterdir() if f.name.startswith(".") and f.name.endswith(".tmp")]
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def clean_stale(exp_dir: Path) -> int:
    """Remove temp files left by killed processes of this host (a live process's are kept; other
    hosts' are theirs to clean) and restore a run left in ``.old-*`` by an interrupted swap.
    Returns how many entries were cleaned."""
    cleaned = 0
    runs = exp_dir / RUNS
    for tmp in [*exp_dir.glob(".*.tmp"), *_run_temps(runs), *runs.glob(".*.tmp")]:
        parts = tmp.name.rsplit(".", 4)  # .<name>.<host>.<pid>.<hex>.tmp
        if len(parts) == 5 and parts[1] == _HOST and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            with contextlib.suppress(OSError):
                tmp.unlink()
                cleaned += 1
    for old in runs.glob(".old-*"):
        name, host, pid = old.name[len(".old-"):].rsplit(".", 2)
        if host == _HOST and pid.isdigit() and not _pid_alive(int(pid)):
            final = runs / name
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
            cleaned += 1
    return cleaned


def read_csv_strict(path: Path, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` that refuses a table that does not parse cleanly (a short or long row, an
    open quote, a truncated line): one line naming the file, never a silent repair."""
    def refuse(reason: str) -> PipelineError:
        return PipelineError(f"refusing corrupt table {path}: {reason} (fix or move the file)")

    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
        widths = {len(r) for r in csv.reader(io.StringIO(text), strict=True) if r}
        df = pd.read_csv(io.StringIO(text), on_bad_lines="error", **kwargs)
    except (csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise refuse((str(err).strip().splitlines() or [type(err).__name__])[0]) from err
    if not text.endswith("\n"):
        raise refuse("its last line is cut off")
    if widths != {len(df.columns)}:
        raise refuse(f"rows of {sorted(widths)} cells under a {len(df.columns)}-column header")
    return df


def shard_paths(exp_dir: Path, table: str, *, skip: str | None = None) -> list[Path]:
    """Every committed shard of ``table`` (sorted by run key), except run ``skip``."""
    runs = exp_dir / RUNS
    if not runs.is_dir():
        return []
    return [d / f"{table}.csv" for d in sorted(runs.iterdir())
            if d.is_dir() and not d.name.startswith(".") and d.name != skip and (d / f"{table}.csv").exists()]


def tables_of(exp_dir: Path) -> list[str]:
    """The names of the tables that committed runs hold."""
    runs = exp_dir / RUNS
    found = {p.stem for p in runs.glob("[!.]*/*.csv")} if runs.is_dir() else set()
    return sorted(found)


def concat(frames: list[pd.DataFrame], lead: tuple[str, ...]) -> pd.DataFrame:
    """Rows of all frames; ``lead`` columns first, then the others in order of appearance."""
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame()
    extra = [c for f in frames for c in f.columns if c not in lead]
    columns = [c for c in lead if any(c in f.columns for f in frames)] + list(dict.fromkeys(extra))
    parts = [f.reindex(columns=columns) for f in frames if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


REQUIRED = ("experiment", "stage", "model", "dataset", "condition", "setting")  # every shard row says whose


def read_shard(path: Path) -> pd.DataFrame:
    """Every cell as the exact string on disk: kept rows are rewritten unchanged. A table that
    parses but is not a shard (its provenance columns missing or renamed, binary junk read as one
    column, its header repeated inside it, a row written twice) is refused in one line."""
    if not path.exists():
        return pd.DataFrame()
    df = read_csv_strict(path, dtype=str, keep_default_na=False, na_filter=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    header_again = (df == pd.Series(df.columns, index=df.columns)).all(axis=1).any()
    reason = (f"no provenance column {missing[0]!r}" if missing and len(df.columns) else
              "its header is repeated inside it" if header_again else
              "a row is written twice" if df.duplicated().any() else None)
    if reason:
        raise PipelineError(f"refusing corrupt table {path}: {reason} (fix or move the file)")
    return df


def check_record(exp_dir: Path) -> None:
    """Read every committed shard of an experiment once, so that a corrupt one stops a run at its
    start in one line, not after its whole computation (at commit)."""
    runs = Path(exp_dir) / RUNS
    for shard in sorted(runs.iterdir()) if runs.is_dir() else ():
        if shard.is_dir() and not shard.name.startswith("."):
            for table in sorted(shard.glob("*.csv")):
                read_shard(table)


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def altered_tables(shard: Path) -> list[str]:
    """What changed in a committed shard since its commit, against the table checksums its
    manifest holds: ``"<table>.csv edited"`` / ``"<table>.csv missing"`` (a damaged column, a
    planted NaN, a model's rows deleted change verdicts silently otherwise). Empty for a shard
    whose manifest predates checksums."""
    import json

    try:
        sums = json.loads((shard / "manifest.json").read_text()).get("tables") or {}
    except (OSError, ValueError):
        return ["manifest.json unreadable"]
    found = []
    for table, digest in sorted(sums.items()):
        path = shard / f"{table}.csv"
        if not path.exists():
            found.append(f"{table}.csv missing")
        elif file_sha256(path) != digest:
            found.append(f"{table}.csv edited")
    return found

