"""What an artefact costs here, from the committed manifests only: the one source of every time the
project quotes (``make help``, the report's "regenerate" line, ``results/bench/reproduce.csv``).
The cards' ``hardware`` says what a run needs (CPU / GPU / Hub), never how long it takes.
No torch, no pandas: ``make help`` reads it in a fraction of a second."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def manifests(folder: Path) -> Iterator[tuple[Path, dict]]:
    """(shard folder, manifest) of every recorded run under ``folder`` (unreadable ones and a
    benchmark's own manifests, whose model is a name, not a config, skipped)."""
    for path in sorted(Path(folder).rglob("runs/*/manifest.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance((m.get("config") or {}).get("model"), dict):
            yield path.parent, m


@dataclass(frozen=True)
class Cost:
    runs: int               # recorded shards of the first seed (what the card's command regenerates)
    wall_s: float           # summed over the runs that measured it
    cpu_s: float | None     # summed over the runs that measured it (None: none did)
    cpu_runs: int           # how many runs measured CPU time (recorded since the entry point did)
    repeats: Cost | None = None   # the seed repeats (make record-seeds), counted apart

    def describe(self, short: bool = False) -> str:
        wall = _minutes(self.wall_s)
        if short:
            return wall if self.cpu_s is None else f"{wall} ({_minutes(self.cpu_s)} CPU)"
        runs = f"{self.runs} run{'s' * (self.runs != 1)}"
        if self.cpu_s is None:
            one = f"{wall} wall over {runs} (CPU time not measured: recorded before the manifests had it)"
        else:
            part = "" if self.cpu_runs == self.runs else f" of {self.cpu_runs}"
            one = f"{wall} wall over {runs}, {_minutes(self.cpu_s)} CPU time{part}"
        return one if self.repeats is None else f"{one}; seed repeats apart: {self.repeats.describe()}"


def _minutes(seconds: float) -> str:
    return "<1 min" if seconds < 60 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def seed_repeats(found: list[dict]) -> list[bool]:
    """Per manifest of one results folder: a seed repeat (make record-seeds), i.e. a run at another
    seed than the folder's first (lowest) recorded seed."""
    seeds = [int(m.get("seed") or 0) for m in found]
    return [s != min(seeds) for s in seeds]


def recorded_cost(folder: Path) -> Cost | None:
    """The summed cost of the runs recorded in one results folder at its first seed (seed
    repeats summed apart, in ``repeats``); None when it holds none."""
    found = [m for _, m in manifests(folder)]
    if not found:
        return None
    flags = seed_repeats(found)
    once = _sum([m for m, again in zip(found, flags, strict=True) if not again])
    again = [m for m, again in zip(found, flags, strict=True) if again]
    return Cost(once.runs, once.wall_s, once.cpu_s, once.cpu_runs, _sum(again) if again else None)


def _sum(found: list[dict]) -> Cost:
    walls = [float(m.get("wall_s") or 0.0) for m in found]
    cpus = [float(m["cpu_s"]) for m in found if m.get("cpu_s") is not None]
    return Cost(len(walls), sum(walls), sum(cpus) if cpus else None, len(cpus))
