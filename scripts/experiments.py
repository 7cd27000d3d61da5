"""``make help``'s list of experiments: per experiment its paper, the hardware it needs (its report
card), what its committed runs cost here (the manifests' wall time, summed over the shards of its
results folder; "-" where nothing is recorded: a GPU artefact) and its variants. No model, no
torch: the cards and the manifests only."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def recorded_minutes(folder: Path) -> float | None:
    walls = []
    for manifest in folder.glob("runs/*/manifest.json"):
        try:
            walls.append(float(json.loads(manifest.read_text()).get("wall_s") or 0))
        except (OSError, ValueError):
            continue
    return sum(walls) / 60 if walls else None


def main() -> None:
    from pipeline.report.artefacts import ARTEFACTS
    from pipeline.report.build import results_folder

    print(f"    {'experiment (EXP=...)':<40} {'paper':<6} {'here':>7}  {'needs':<34} variants")
    for a in sorted(ARTEFACTS, key=lambda a: a.experiment):
        minutes = recorded_minutes(ROOT / "results" / results_folder(a))
        variants = re.search(r"variant=([\w,]+)", a.command)
        here = "-" if minutes is None else "<1 min" if minutes < 1 else f"{minutes:.0f} min"
        needs = a.hardware if len(a.hardware) <= 34 else a.hardware[:33] + "~"
        print(f"    {a.experiment:<40} {a.paper:<6} {here:>7}  {needs:<34} {variants.group(1) if variants else ''}")
    print("    (here: the committed runs' recorded wall time on a 2-core CPU; results/bench/reproduce.csv per run)")


if __name__ == "__main__":
    main()
