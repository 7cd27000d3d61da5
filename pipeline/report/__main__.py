"""``python -m pipeline.report [--results results]``: write results/REPORT.md and results/report.html,
and rewrite the headline block of the README (between its marker comments) from the same sections."""

import argparse
import sys
import time
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.report.build import build
from pipeline.report.headline import verdict_counts, write_readme_headline

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--no-html", action="store_true")
    ap.add_argument("--readme", type=Path, default=Path("README.md"), help="the README whose headline block to rewrite")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone (a report of another folder)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    try:
        secs = build(args.results, args.results / "REPORT.md", None if args.no_html else args.results / "report.html")
        changed = not args.no_readme and write_readme_headline(args.readme, secs)
    except PipelineError as err:
        sys.exit(f"error: {err}")
    counts = ", ".join(f"{v}: {n}" for v, n in verdict_counts(secs).items())
    print(f"wrote {args.results / 'REPORT.md'}{'' if args.no_html else ' and report.html'}: {len(secs)} artefacts "
          f"({counts}) in {time.perf_counter() - t0:.1f} s; "
          f"README headline {'rewritten' if changed else 'unchanged' if not args.no_readme else 'left alone'}")
