"""``python -m pipeline.report [--results results]``: write results/REPORT.md and results/report.html."""

import argparse
import time
from pathlib import Path

from pipeline.report.build import build

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--no-html", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    secs = build(args.results, args.results / "REPORT.md", None if args.no_html else args.results / "report.html")
    counts = {}
    for s in secs:
        counts[s["verdict"]] = counts.get(s["verdict"], 0) + 1
    print(f"wrote {args.results / 'REPORT.md'} and report.html: {len(secs)} artefacts "
          f"({', '.join(f'{v}: {n}' for v, n in counts.items())}) in {time.perf_counter() - t0:.1f} s")
