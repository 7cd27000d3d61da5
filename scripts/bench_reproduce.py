"""What regenerating the offline record costs: one row per committed shard of ``results/`` with the
cost its own manifest measured when it was recorded (wall seconds; CPU seconds, threads, cores
and load where the manifest has them: runs recorded since the entry point measured them), and a
total per results folder and overall, written to ``results/bench/reproduce.csv``.

    python scripts/bench_reproduce.py          # make reproduce runs it after re-recording

The total is the sum of the runs as they were measured, each on the machine and at the load its
manifest names (the load columns say how busy it was); it is not one timed end-to-end
invocation. A shard whose manifest has no ``wall_s`` counts as unknown and is listed as such.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("folder", "shard", "experiment", "model", "seed", "seed_repeat", "device", "git_sha", "timestamp",
           "wall_s", "cpu_s", "threads", "cores", "load_start", "load_end")


def shard_costs(results: Path) -> list[dict]:
    """One row per shard; ``seed_repeat``: a run at another seed than its folder's first (make
    record-seeds), counted apart from the one-seed pack."""
    from pipeline.report.costs import manifests, seed_repeats

    by_folder: dict[str, list[tuple[Path, dict]]] = {}
    for shard, m in manifests(results):
        if shard.parts[len(results.parts)] not in ("bench", "reference"):
            by_folder.setdefault(str(shard.parents[1].relative_to(results)), []).append((shard, m))
    rows = []
    for folder, found in by_folder.items():
        for (shard, m), again in zip(found, seed_repeats([m for _, m in found]), strict=True):
            rows.append({"folder": folder, "shard": shard.name, **{k: m.get(k) for k in COLUMNS[2:]},
                         "seed": int(m.get("seed") or 0), "seed_repeat": again})
    return rows


def main() -> int:
    import pandas as pd

    from pipeline.core.disk import atomic_write

    results = ROOT / "results"
    rows = shard_costs(results)
    if not rows:
        sys.exit("error: no recorded shard under results/")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    pack, repeats = df[~df["seed_repeat"]], df[df["seed_repeat"]]
    totals = pack.groupby("folder", sort=True).agg(wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"),
                                                     shard=("shard", "count")).reset_index()
    totals["shard"] = totals["shard"].map(lambda n: f"TOTAL of {n} shards")
    overall = [{"folder": "ALL", "shard": f"TOTAL of {len(pack)} shards, one seed per artefact",
                "wall_s": pack["wall_s"].sum(), "cpu_s": pack["cpu_s"].sum()},
               {"folder": "ALL", "shard": f"TOTAL of {len(repeats)} seed repeats (make record-seeds)",
                "wall_s": repeats["wall_s"].sum(), "cpu_s": repeats["cpu_s"].sum()}]
    out = pd.concat([df, totals, pd.DataFrame(overall)], ignore_index=True)
    cores = int(df["cores"].dropna().max()) if df["cores"].notna().any() else "?"
    out["machine"] = f"{platform.machine()}, {cores} cores"
    path = results / "bench" / "reproduce.csv"
    atomic_write(path, lambda fh: out.to_csv(fh, index=False))
    unknown = int(df["wall_s"].isna().sum())
    with_cpu = pack["cpu_s"].notna()
    print(f"{len(pack)} shards, one seed per artefact: {overall[0]['wall_s'] / 3600:.2f} h of wall time as recorded"
          + (f" ({unknown} without a measured time)" if unknown else "")
          + f"; CPU time measured for {int(with_cpu.sum())} of them: {pack.loc[with_cpu, 'cpu_s'].sum() / 3600:.2f} h"
          + f"; seed repeats apart: {len(repeats)} shards, {overall[1]['wall_s'] / 3600:.2f} h wall")
    for _, r in totals.sort_values("wall_s", ascending=False).iterrows():
        print(f"  {r['folder']:<48} {r['wall_s'] / 60:7.1f} min  ({r['shard']})")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
