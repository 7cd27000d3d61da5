"""Shared timing for the benchmark scripts: interleaved repeats, ratios within one run.

The machines are shared and noisy, so methods are timed alternately (a, b, c, a, b, c, ...)
after one warm-up each, and reported as medians and ratios to a baseline from the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_interleaved(methods: dict[str, Callable[[], None]], repeats: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each method, ``repeats`` times, interleaved (CUDA synchronised)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    for r in range(repeats):
        for name, fn in methods.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    return times


def ratio_rows(times: dict[str, list[float]], baseline: str, **extra) -> list[dict]:
    """One row per method: median and min seconds, and the median's ratio to ``baseline``'s."""
    base = statistics.median(times[baseline])
    return [{"method": k, "median_s": statistics.median(v), "min_s": min(v),
             "ratio_to_" + baseline: statistics.median(v) / base, "threads": torch.get_num_threads(),
             **extra} for k, v in times.items()]


def device_name(device: torch.device) -> str:
    return str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)


def bench_parser(doc: str, *, seq_len: int, batch: int, repeats: int):
    """The options every benchmark script takes (model and data are config names)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", help="conf/model/<name>.yaml")
    ap.add_argument("--data", default="wiki_summaries", help="conf/data/<name>.yaml")
    ap.add_argument("--seq-len", type=int, default=seq_len)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--results", type=Path, default=Path("results"))
    return ap


def load_bench_model(name: str):
    """(model config dict, model, tokenizer, device) for a conf/model name."""
    from omegaconf import OmegaConf

    from pipeline.core.paths import REPO_ROOT
    from pipeline.models.load import load_model

    cfg = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml"))
    return (cfg, *load_model(cfg))
