"""Fetch the six Jane Austen novels (Debian r-cran-janeaustenr) into the asset cache.

Usage: python scripts/prepare_austen.py [DEST]   (default: $PIPELINE_CACHE/assets/austen)
Idempotent: does nothing when DEST/austen.txt already exists. See pipeline.data.offline.prepare_austen.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.data.text import AUSTEN_NOVELS, prepare_austen  # noqa: E402


def main(argv: list[str]) -> int:
    try:
        dest = prepare_austen(Path(argv[0]) if argv else None)
    except (PipelineError, OSError) as err:  # OSError: e.g. the cache dir is not writable
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    chars = len((dest / "austen.txt").read_text(encoding="utf-8"))
    print(f"austen: {len(AUSTEN_NOVELS)} novels, {chars:,} chars in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
