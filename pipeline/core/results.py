"""Result tables: one tidy CSV per table, every row carrying its provenance.

``ResultsWriter.write`` upserts: a re-run replaces the rows of its own identity (experiment,
stage, model, revision, dataset, condition, seed) and keeps every other row in place. The
read-modify-write runs under a file lock (Hydra multirun jobs share tables) and the file is
replaced atomically (temp file + fsync + ``os.replace``), so a failed or interrupted write
leaves the previous CSV byte-identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import pandas as pd
from filelock import FileLock, Timeout

from pipeline.core.errors import PipelineError
from pipeline.core.loggers import strip_secrets
from pipeline.core.paths import REPO_ROOT

PROVENANCE_COLUMNS: tuple[str, ...] = (
    "experiment", "stage", "model", "revision", "dataset", "condition", "seed",
    "git_sha", "torch", "transformers", "lm_eval", "device", "timestamp",
)  # fmt: skip
IDENTITY_COLUMNS: tuple[str, ...] = (
    "experiment", "stage", "model", "revision", "dataset", "condition", "seed",
)  # fmt: skip
_VERSIONED = ("torch", "transformers", "lm_eval")
_LOCK_TIMEOUT_S = 600.0
_REPO_ROOT = REPO_ROOT
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def git_sha(repo_root: Path | None = None) -> str:
    """Short commit sha of ``repo_root`` (default: this checkout), ``-dirty`` if tracked files
    have uncommitted changes (outside ``results/``: the outputs themselves do not make the code
    dirty); ``"unknown"`` outside a git repository or without git."""
    root = Path(repo_root) if repo_root is not None else _REPO_ROOT

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def versions() -> dict[str, str]:
    """Installed versions of the packages that change numbers: torch, transformers, lm_eval."""
    found: dict[str, str] = {}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _scalar(value: Any) -> Any:
    """Unwrap 0-d tensors / numpy scalars so the CSV holds ``1.5``, not ``tensor(1.5000)``."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _write_csv(df: pd.DataFrame, fh: IO[str]) -> None:
    """Serialise ``df``; NaN as an empty cell, inf as ``inf`` (both read back as floats)."""
    df.to_csv(fh, index=False, lineterminator="\n")


def _atomic_write(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write ``path`` via a temp file in its directory, fsync, then ``os.replace``.

    On any failure (``BaseException``, so Ctrl-C too) the temp file is removed and the old file
    is untouched. The temp file is opened normally (not ``mkstemp``) so it gets umask-based
    permissions instead of 0600.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX only)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write_failed(path: Path, err: OSError) -> PipelineError:
    reason = err.strerror or str(err) or type(err).__name__
    return PipelineError(f"could not write {path}: {reason} (the previous file is intact)")


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` with a one-line PipelineError for a corrupt or unreadable table."""
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PipelineError(f"could not read {path}: {reason} (fix or move the file)") from err


def _read_text(path: Path) -> pd.DataFrame:
    """Every cell as the exact string on disk: kept rows are rewritten unchanged."""
    if not path.exists():
        return pd.DataFrame()
    return _read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


class ResultsWriter:
    """Writes ``root/<experiment>/<table>.csv`` and run manifests for one (model, data, seed)."""

    def __init__(
        self,
        root: Path,
        experiment: str,
        *,
        model: str,
        revision: str | None,
        dataset: str,
        seed: int,
        device: str,
    ) -> None:
        self.root = Path(root)
        self.experiment = experiment
        self.model = model
        self.revision = revision
        self.dataset = dataset
        self.seed = int(seed)
        self.device = str(device)
        self.git_sha = git_sha()
        self.versions = versions()

    def path(self, table: str) -> Path:
        """``root/experiment/table.csv``; ``table`` must be a plain name, not a path."""
        if not table or Path(table).name != table or table in {".", ".."}:
            raise ValueError(f"table must be a plain file name, got {table!r}")
        return self.root / self.experiment / f"{table}.csv"

    def _identity(self, stage: str, condition: str) -> dict[str, str]:
        """This batch's identity as the strings the CSV holds (None revision -> empty)."""
        values = (self.experiment, stage, self.model, self.revision or "", self.dataset,
                  condition, self.seed)  # fmt: skip
        return {col: str(v) for col, v in zip(IDENTITY_COLUMNS, values, strict=True)}

    def write(
        self, table: str, rows: list[dict], *, stage: str, condition: str = "default"
    ) -> Path:
        """Upsert ``rows`` into ``table``: drop the rows of this identity, append these.

        Provenance columns come first, then the existing columns, then new ones. An empty
        ``rows`` deletes this identity's rows. Raises ValueError if a row uses a provenance
        name, PipelineError (one line) if the file cannot be written.
        """
        for row in rows:
            clash = sorted(set(row) & set(PROVENANCE_COLUMNS))
            if clash:
                raise ValueError(f"row keys {clash} collide with provenance columns")
        identity = self._identity(stage, condition)
        provenance = {
            **identity,
            "revision": self.revision,  # None -> empty cell
            "seed": self.seed,
            "git_sha": self.git_sha,
            **self.versions,
            "device": self.device,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        records = [{**provenance, **{k: _scalar(v) for k, v in row.items()}} for row in rows]
        # object dtype: ints stay ints even when some rows lack the column.
        new = pd.DataFrame(records, dtype=object)
        path = self.path(table)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S):
                old = _read_text(path)
                merged = self._merge(old, new, identity)
                _atomic_write(path, lambda fh: _write_csv(merged, fh))
        except Timeout as err:
            raise PipelineError(
                f"could not write {path}: another process held {err.lock_file} for over "
                f"{_LOCK_TIMEOUT_S:.0f} s (is a run stuck? the previous file is intact)"
            ) from err
        except OSError as err:
            raise _write_failed(path, err) from err
        return path

    @staticmethod
    def _merge(old: pd.DataFrame, new: pd.DataFrame, identity: dict[str, str]) -> pd.DataFrame:
        """Old rows minus this identity's, then the new rows; provenance columns first."""
        if len(old):
            keys = old.reindex(columns=list(IDENTITY_COLUMNS), fill_value="")
            mine = (keys == pd.Series(identity)).all(axis=1)
            old = old.loc[~mine]
        extra = [c for c in [*old.columns, *new.columns] if c not in PROVENANCE_COLUMNS]
        columns = [*PROVENANCE_COLUMNS, *dict.fromkeys(extra)]
        parts = [df.reindex(columns=columns) for df in (old, new) if len(df)]
        if not parts:
            return pd.DataFrame(columns=columns)
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def read(self, table: str) -> pd.DataFrame:
        """The table with typed columns; an empty DataFrame if it does not exist yet.

        Provenance columns are strings (an empty revision stays ``""``) except ``seed`` (int).
        In the row columns only empty cells are NaN, so a value such as ``"NA"`` or ``"None"``
        stays a string; ``inf``/``-inf``/``nan`` parse as floats.
        """
        path = self.path(table)
        if not path.exists():
            return pd.DataFrame()
        header = _read_csv(path, nrows=0).columns
        text = {c: str for c in PROVENANCE_COLUMNS if c in header and c != "seed"}
        na = {c: [""] for c in header if c not in PROVENANCE_COLUMNS}
        return _read_csv(path, dtype=text, keep_default_na=False, na_values=na)

    def manifest_path(self) -> Path:
        """``root/experiment/manifests/<model>__<dataset>__seed<seed>.json``."""
        model = _UNSAFE.sub("_", self.model.replace("/", "--"))
        dataset = _UNSAFE.sub("_", self.dataset.replace("/", "--"))
        return (
            self.root / self.experiment / "manifests" / f"{model}__{dataset}__seed{self.seed}.json"
        )

    def write_manifest(self, config: Mapping, extra: dict | None = None) -> Path:
        """Write the run manifest atomically: resolved config (secrets stripped), versions,
        git sha, device, timestamp, python and platform; ``extra`` keys are merged at top level.
        """
        if hasattr(config, "_metadata"):  # an OmegaConf container: resolve interpolations
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(config, resolve=True)
        manifest: dict[str, Any] = {
            "experiment": self.experiment,
            "model": self.model,
            "revision": self.revision,
            "dataset": self.dataset,
            "seed": self.seed,
            "device": self.device,
            "git_sha": self.git_sha,
            "versions": self.versions,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": strip_secrets(config),
        }
        clash = sorted(set(extra or {}) & set(manifest))
        if clash:
            raise ValueError(f"extra keys {clash} collide with manifest fields")
        manifest.update(strip_secrets(extra or {}))
        text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
        path = self.manifest_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda fh: fh.write(text))
        except OSError as err:
            raise _write_failed(path, err) from err
        return path
