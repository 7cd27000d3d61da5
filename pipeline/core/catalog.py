"""The secondary configs a stage looks up by name: datasets (``conf/data``), zero-shot suites
(``conf/eval``) and published numbers (``conf/paper``).

In a run they come from the composed Hydra config (``conf/config.yaml`` puts every file of the
three groups under ``catalog.<group>.<name>``), so any of them can be overridden on the command
line, e.g. ``catalog.data.austen.bos=every`` or ``catalog.eval.paper_b.limit=50``. Outside a run
(tests, scripts, a Context built by hand) :meth:`Catalog.from_files` reads the same files. Every
entry a stage looks up is recorded, resolved, and the run manifest lists them (``catalog_used``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.paths import CONF_DIR

GROUPS = ("data", "eval", "paper")
WHAT = {"data": "data", "eval": "eval suite", "paper": "paper"}


class Catalog:
    """Named entries per group, each a plain dict; ``get`` records what was used."""

    def __init__(self, entries: Mapping[str, Mapping[str, Any]]):
        self.entries = {g: dict(entries.get(g, {})) for g in GROUPS}
        self.used: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}

    @classmethod
    def from_files(cls) -> Catalog:
        """The catalog as the files in ``conf/`` define it (no command-line overrides)."""
        return cls({g: {p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=True)
                        for p in sorted((CONF_DIR / g).glob("*.yaml"))} for g in GROUPS})

    def get(self, group: str, name: str) -> dict[str, Any]:
        """A copy of entry ``name`` of ``group``; an unknown name fails in one line."""
        if name not in self.entries[group]:
            known = ", ".join(sorted(self.entries[group])) or "(none)"
            raise PipelineError(f"unknown {WHAT[group]} '{name}'; known: {known}")
        entry = copy.deepcopy(self.entries[group][name])
        self.used[group][name] = entry
        return copy.deepcopy(entry)

    def used_entries(self) -> dict[str, dict[str, Any]]:
        """The resolved entries looked up so far, per group (for the manifest)."""
        return {g: dict(v) for g, v in self.used.items() if v}


_FILES: Catalog | None = None


def default_catalog() -> Catalog:
    """The file-based catalog, read once (for calls made without a run's catalog)."""
    global _FILES
    if _FILES is None:
        _FILES = Catalog.from_files()
    return _FILES
