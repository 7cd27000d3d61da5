"""Redraw every figure from the CSVs under results/ (no model, no GPU)."""

import argparse
from pathlib import Path

from pipeline.figures import draw_all

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("results"))
    for path in draw_all(ap.parse_args().results):
        print(path)
