"""Result tables: one tidy CSV per table, every row carrying its provenance and its setting.

A run's rows go to its own shard (``pipeline.core.store``): ``ResultsWriter.write`` upserts
rows of one (stage, condition, step) into the run's staging folder, and ``commit`` makes the
run's tables and manifest visible together. Every row names the run's ``setting``, a hash of
the resolved setting that produced it (stage arguments, model config incl. dtype and revision,
data config incl. split, seed), so a sweep over any of them keeps every job's rows, and a re-run
of the same setting replaces exactly its own. A run that was killed is resumed by a re-run of
the same setting: what it had written is still staged (``done`` tells a stage what to skip).
"""

from __future__ import annotations

import io
import json
import platform
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import pandas as pd
from filelock import FileLock

from pipeline.core.disk import atomic_write
from pipeline.core.errors import PipelineError
from pipeline.core.loggers import strip_secrets
from pipeline.core.provenance import git_sha, setting_hash, versions
from pipeline.core.store import (
    RUNS,
    adopt_abandoned,
    check_record,
    clean_stale,
    collect_abandoned,
    concat,
    file_sha256,
    read_shard,
    shard_paths,
    staging_name,
    swap_in,
)

PROVENANCE_COLUMNS: tuple[str, ...] = (
    "experiment", "stage", "model", "revision", "dataset", "condition", "seed", "setting", "step",
    "git_sha", "torch", "transformers", "lm_eval", "device", "timestamp",
)  # fmt: skip
ROW_KEY: tuple[str, ...] = ("stage", "condition", "step")  # identity of rows inside one run
LEGACY = "legacy"  # the setting of rows recorded before settings were hashed
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def _scalar(value: Any) -> Any:
    """Unwrap 0-d tensors / numpy scalars so the CSV holds ``1.5``, not ``tensor(1.5000)``."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _write_csv(df: pd.DataFrame, fh: IO[str]) -> None:
    """Serialise ``df``; NaN as an empty cell, inf as ``inf`` (both read back as floats)."""
    df.to_csv(fh, index=False, lineterminator="\n")


def _write_failed(path: Path, err: OSError) -> PipelineError:
    reason = err.strerror or str(err) or type(err).__name__
    return PipelineError(f"could not write {path}: {reason} (the previous file is intact)")


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells -> typed columns, as a CSV reader would: provenance columns stay strings (an
    empty revision stays ""), ``seed`` is an int and ``step`` a number; in the row columns only
    empty cells are NaN, so a value such as "NA" or "None" stays a string."""
    if not len(df.columns):
        return df
    buf = io.StringIO()
    _write_csv(df, buf)
    buf.seek(0)
    text = {c: str for c in PROVENANCE_COLUMNS if c in df.columns and c not in ("seed", "step")}
    na = {c: [""] for c in df.columns if c not in text}
    return pd.read_csv(buf, dtype=text, keep_default_na=False, na_values=na)


def _merged_text(exp_dir: Path, table: str) -> pd.DataFrame:
    """Every committed shard of ``table``, concatenated, cells as the text on disk."""
    return concat([read_shard(p) for p in shard_paths(Path(exp_dir), table)], PROVENANCE_COLUMNS)


def read_table(exp_dir: Path, table: str) -> pd.DataFrame:
    """Every committed row of ``table`` in ``results/<experiment>/`` (shards merged), typed."""
    return _typed(_merged_text(exp_dir, table))


def rebuild_views(exp_dir: Path, tables: list[str]) -> list[Path]:
    """Rewrite ``<table>.csv`` (the merged view read by people and diffs) from the shards.

    The views are derived: the shards are the record. A local lock serialises rebuilds (so local
    parallel jobs leave complete views); where locks do not hold (NFS), a view may miss a shard
    committed during a rebuild, and the next rebuild (any run's commit, ``make figures``) fixes it."""
    written = []
    exp_dir = Path(exp_dir)
    with FileLock(str(exp_dir / ".views.lock"), timeout=120):
        for table in tables:
            merged = _merged_text(exp_dir, table)
            path = exp_dir / f"{table}.csv"
            atomic_write(path, lambda fh, m=merged: _write_csv(m, fh))
            written.append(path)
    return written


class ResultsWriter:
    """Writes one run's tables and manifest under ``root/<experiment>/`` (see the module doc)."""

    def __init__(self, root: Path, experiment: str, *, model: str, revision: str | None, dataset: str,
                 seed: int, device: str, setting: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.experiment = experiment
        self.model = model
        self.revision = revision
        self.dataset = dataset
        self.seed = int(seed)
        self.device = str(device)
        self.setting = setting_hash({**(setting or {}), "revision": revision})
        self.git_sha = git_sha()
        self.versions = versions()
        self.exp_dir = self.root / experiment
        safe = [_UNSAFE.sub("_", x.replace("/", "--")) for x in (model, dataset)]
        self.key = f"{safe[0]}__{safe[1]}__seed{self.seed}__{self.setting}"
        self.staging = self.exp_dir / RUNS / staging_name(self.key)  # this job's own
        # a killed job of this very setting left its rows: adopt them (never a live job's folder)
        self.resumed = adopt_abandoned(self.exp_dir / RUNS, self.key, self.staging, self.git_sha)
        if self.exp_dir.is_dir():
            clean_stale(self.exp_dir)
            for name in collect_abandoned(self.exp_dir / RUNS):
                print(f"[results] removed {name}: a killed run nobody resumed for two weeks", flush=True)
            check_record(self.exp_dir)

    def path(self, table: str) -> Path:
        """``root/experiment/table.csv`` (the merged view); ``table`` must be a plain name."""
        if not table or Path(table).name != table or table in {".", ".."}:
            raise ValueError(f"table must be a plain file name, got {table!r}")
        return self.exp_dir / f"{table}.csv"

    def write(self, table: str, rows: list[dict], *, stage: str, condition: str = "default",
              step: int | str | None = None) -> Path:
        """Upsert ``rows`` of (stage, condition, step) into this run's staged ``table``.

        ``step="rows"``: each row carries its own ``step`` (a training curve), all upserted in one
        rewrite. Provenance columns come first. An empty ``rows`` deletes those rows. Raises
        ValueError if a row uses a provenance name, PipelineError (one line) if the file cannot be
        written.
        """
        per_row = step == "rows"
        for row in rows:
            clash = sorted(set(row) & set(PROVENANCE_COLUMNS) - ({"step"} if per_row else set()))
            if clash:
                raise ValueError(f"row keys {clash} collide with provenance columns")
        self.path(table)  # validates the name
        provenance = {
            "experiment": self.experiment, "stage": stage, "model": self.model, "revision": self.revision,
            "dataset": self.dataset, "condition": condition, "seed": self.seed, "setting": self.setting,
            "step": step, "git_sha": self.git_sha, **self.versions, "device": self.device,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        new = pd.DataFrame([{**provenance, **{k: _scalar(v) for k, v in r.items()}} for r in rows],
                           columns=None if rows else list(PROVENANCE_COLUMNS), dtype=object)
        path = self.staging / f"{table}.csv"
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            old = read_shard(path)
            if len(old):
                key = {"stage": stage, "condition": condition, "step": "" if step is None else str(step)}
                cols = old.reindex(columns=list(ROW_KEY), fill_value="")
                if per_row:  # every step these rows carry
                    steps = {str(r["step"]) for r in rows}
                    mine = (cols["stage"] == stage) & (cols["condition"] == condition) & cols["step"].isin(steps)
                else:
                    mine = (cols == pd.Series(key)).all(axis=1)
                old = old.loc[~mine]
            merged = concat([old, new], PROVENANCE_COLUMNS)
            atomic_write(path, lambda fh: _write_csv(merged, fh))
        except OSError as err:
            raise _write_failed(path, err) from err
        return self.path(table)

    def staged(self, table: str) -> pd.DataFrame:
        """This run's own rows of ``table`` so far (also those of a killed run it resumes)."""
        return _typed(read_shard(self.staging / f"{table}.csv"))

    def done(self, table: str, stage: str, condition: str) -> bool:
        """Whether the killed run of this setting that this run resumes wrote that condition
        (False when nothing was staged before this run started: a run never skips its own work)."""
        if not self.resumed:
            return False
        rows = self.staged(table)
        return bool(len(rows)) and bool(((rows["stage"] == stage) & (rows["condition"] == condition)).any())

    def read(self, table: str) -> pd.DataFrame:
        """The table as this run sees it: every committed shard but its own, plus its own rows
        (staged, or committed when nothing is staged). Empty if there are none."""
        own = self.staging if self.staging.is_dir() else self.exp_dir / RUNS / self.key
        frames = [read_shard(p) for p in shard_paths(self.exp_dir, table, skip=self.key)]
        frames.append(read_shard(own / f"{table}.csv"))
        return _typed(concat(frames, PROVENANCE_COLUMNS))

    def commit(self, config: Mapping, extra: dict | None = None) -> Path:
        """Write the manifest beside the staged tables, then make the run visible in one rename
        (replacing an earlier run of the same setting) and rebuild the merged views. Manifest:
        resolved config (secrets stripped), versions, git sha, setting, device, timestamp,
        python and platform, and the SHA-256 of each table (so that a table edited after the commit is
found: :func:`pipeline.core.store.altered_tables`); ``extra`` keys are merged at top level."""
        if hasattr(config, "_metadata"):  # an OmegaConf container: resolve interpolations
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(config, resolve=True)
        manifest: dict[str, Any] = {
            "experiment": self.experiment, "model": self.model, "revision": self.revision,
            "dataset": self.dataset, "seed": self.seed, "setting": self.setting, "device": self.device,
            "git_sha": self.git_sha, "versions": self.versions, "python": sys.version.split()[0],
            "platform": platform.platform(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": strip_secrets(config),
        }  # fmt: skip
        clash = sorted(set(extra or {}) & set(manifest))
        if clash:
            raise ValueError(f"extra keys {clash} collide with manifest fields")
        manifest.update(strip_secrets(extra or {}))
        final = self.exp_dir / RUNS / self.key
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            tables = sorted(p.stem for p in self.staging.glob("*.csv"))
            manifest["tables"] = {t: file_sha256(self.staging / f"{t}.csv") for t in tables}
            text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
            atomic_write(self.staging / "manifest.json", lambda fh: fh.write(text))
            new_keys = {t: self.staged(t)[["stage", "condition"]].astype(str) for t in tables}
            swap_in(self.staging, final)
        except OSError as err:
            raise _write_failed(final, err) from err
        try:  # the run is committed now: a failure from here on must not say it was not
            self._supersede_legacy(new_keys)
            rebuild_views(self.exp_dir, tables)
        except OSError as err:
            raise PipelineError(f"the run is committed ({final}), but the merged views of {self.exp_dir} could not "
                                f"be rebuilt: {err.strerror or err} (the shards are the record; free space, then "
                                "make figures or any run's commit rebuilds them)") from err
        return final / "manifest.json"

    def _supersede_legacy(self, new_keys: dict[str, pd.DataFrame]) -> None:
        """Rows recorded before settings were hashed sit in a ``legacy`` shard per model, dataset
        and seed; a committed run replaces the legacy rows of the (stage, condition) it wrote."""
        legacy = self.exp_dir / RUNS / f"{self.key.rsplit('__', 1)[0]}__{LEGACY}"
        for table, keys in new_keys.items():
            path = legacy / f"{table}.csv"
            old = read_shard(path)
            if not len(old):
                continue
            pairs = set(map(tuple, keys.values.tolist()))
            keep = [(st, c) not in pairs for st, c in zip(old["stage"], old["condition"], strict=True)]
            if not all(keep):
                rest = old.loc[keep]
                if len(rest):
                    atomic_write(path, lambda fh, r=rest: _write_csv(r, fh))
                else:
                    path.unlink()
