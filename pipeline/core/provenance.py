"""Who made a row: the commit of the code (:func:`git_sha`), the versions of the packages that
change numbers (:func:`versions`) and the hash that names a setting (:func:`setting_hash`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.paths import REPO_ROOT

_VERSIONED = ("torch", "transformers", "lm_eval")


def git_sha(repo_root: Path | None = None) -> str:
    """Short commit sha of ``repo_root`` (default: this checkout), ``-dirty`` if tracked files
    have uncommitted changes (outside ``results/``: the outputs themselves do not make the code
    dirty); ``"unknown"`` outside a git repository or without git."""
    root = Path(repo_root) if repo_root is not None else REPO_ROOT

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


def setting_hash(setting: Mapping[str, Any]) -> str:
    """10 hex digits of the SHA-256 of the setting as canonical JSON."""
    text = json.dumps(setting, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]
