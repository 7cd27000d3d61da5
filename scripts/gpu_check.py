"""``make gpu-check``: everything owed to a GPU, as one command that fits a short device loan.

GPU time comes in rare, short loans (about 15 minutes of one H200), so the checks that need CUDA
are prepared here, in order of what matters most, each under its own time limit; a failing or
slow part is recorded and the next one runs. At the end a summary table, and
``results/bench/gpu_check.csv`` (one row per part: device, status, seconds, the command). The
benchmark scripts write their own CSVs under ``results/bench/`` with the device in every row.

Parts:
  kernels     the Triton kernels compiled on CUDA against their torch references (pytest -m gpu)
  bench_kernels  kernel bandwidth at real sizes (weight fake-quant vs the device's copy bandwidth)
  bench_profile  the profile pass vs a bare forward (target <= 1.05x)
  bench_eval     perplexity throughput vs bare (target within 5%)
  bench_train    the GPT-2 training step vs a bare step (tokens/s, MFU)
  gpt2_gpu       paper A's GPT-2 default variant at the gpu model size, for the minutes left
  birth_full     paper C's README setting at full size

``--dry-run``: the same parts at toy sizes on the CPU, into a temporary folder (CI runs this so
that the script cannot rot): the kernel tests are only collected, the benchmarks take tiny
models and one repeat, the training runs take ``debug=cpu``.

  python scripts/gpu_check.py             # on the GPU machine (make gpu-check)
  python scripts/gpu_check.py --dry-run   # anywhere, in about two minutes
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def parts(results: Path, dry: bool) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) in the order they run."""
    bench = ["--results", str(results)]
    toy = ["--model", "tiny_llama", "--seq-len", "32", "--batch", "2", "--repeats", "1"] if dry else []
    run = [PY, "-m", "pipeline", f"run.results_dir={results / 'bench'}", "run.figures=false"]
    return [
        ("kernels", 120, [PY, "-m", "pytest", "-q", "-m", "gpu", *(["--collect-only"] if dry else [])]),
        ("bench_kernels", 90, [PY, "scripts/bench_kernels.py", *bench,
                               *(["--device", "cpu", "--shrink", "256", "--repeats", "1"] if dry else [])]),
        ("bench_profile", 90, [PY, "scripts/bench_profile.py", *bench, *toy]),
        ("bench_eval", 90, [PY, "scripts/bench_eval.py", *bench, *toy, *(["--windows", "1"] if dry else [])]),
        ("bench_train", 90, [PY, "scripts/bench_train.py", *bench,
                             *(["--model", "tiny_gpt2", "--seq-len", "32", "--batch", "2", "--repeats", "1",
                                "--steps", "2"] if dry else [])]),
        ("gpt2_gpu", 240, [*run, "experiment=massive_activations_gpt2_default",
                           *(["debug=cpu"] if dry else ["setting=reduced", "model=ma_gpt2_gpu",
                                                        "stage.train_lm.steps=500"])]),
        ("birth_full", 120, [*run, "experiment=birth_readme", *(["debug=cpu"] if dry else [])]),
    ]


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, into a temporary folder")
    ap.add_argument("--only", default="", help="comma-separated part names (default: all, in order)")
    a = ap.parse_args(argv)
    device = device_name()
    if not a.dry_run and device == "cpu":
        print("gpu-check: no CUDA device here; --dry-run checks the script on the CPU", file=sys.stderr)
        return 2
    results = Path(tempfile.mkdtemp(prefix="gpu-check-")) if a.dry_run else ROOT / "results"
    chosen = [p for p in parts(results, a.dry_run) if not a.only or p[0] in a.only.split(",")]
    rows = []
    for name, limit, cmd in chosen:
        print(f"[gpu-check] {name} (limit {limit} s): {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {limit} s limit"
        rows.append({"part": name, "device": device, "status": status,
                     "seconds": round(time.perf_counter() - t0, 1), "command": " ".join(cmd[1:])})
    out = results / "bench" / "gpu_check.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["part"])
        w.writeheader()
        w.writerows(rows)
    print(f"\n{'part':<15}{'status':<30}{'seconds':>8}   ({device}; {out})")
    for r in rows:
        print(f"{r['part']:<15}{r['status']:<30}{r['seconds']:>8}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
