"""``make help``'s list of experiments: per experiment its paper, the hardware it needs (its report
card), what its committed runs cost here (:mod:`pipeline.report.costs`: the manifests' wall and CPU
time, summed over the shards of its results folder; "-" where nothing is recorded: a GPU artefact)
and its variants. No model, no torch: the cards and the manifests only."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from pipeline.report.artefacts import ARTEFACTS
    from pipeline.report.build import results_folder
    from pipeline.report.costs import recorded_cost

    print(f"    {'experiment (EXP=...)':<40} {'paper':<6} {'recorded here':>20}  {'needs':<34} variants")
    for a in sorted(ARTEFACTS, key=lambda a: a.experiment):
        cost = recorded_cost(ROOT / "results" / results_folder(a))
        variants = re.search(r"variant=([\w,]+)", a.command)
        here = "-" if cost is None else cost.describe(short=True)
        needs = a.hardware if len(a.hardware) <= 34 else a.hardware[:33] + "~"
        print(f"    {a.experiment:<40} {a.paper:<6} {here:>20}  {needs:<34} {variants.group(1) if variants else ''}")
    print("    (recorded here: the committed runs' wall time, and CPU time where measured, summed over the runs")
    print("     of the folder, on a 2-core CPU; per run: results/bench/reproduce.csv)")


if __name__ == "__main__":
    main()
