"""Benchmark: cost of ``ma_profile``'s instrumentation vs a bare forward pass (issue 2, part 10).

In one run, on the same model and batch, interleaved over repeats (the machine is shared and
noisy, so only ratios within one run mean anything):
  bare      -- the forward pass alone
  ma_profile -- the forward pass with the stage's reducing hooks on every decoder layer
  paper_way -- the official code's way: every layer's hidden state cloned to the CPU as float64,
               then sorted for top-k and median (locuslab/massive-activations, main_llm.py exp2)
Writes results/bench/profile.csv (median seconds per batch and the ratio to bare).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.arch import decoder_layers, num_layers
from pipeline.data import build_source, token_windows
from pipeline.hooks import capture
from pipeline.models import load_model
from pipeline.profile_stats import LayerProfile, token_types
from pipeline.results import ResultsWriter
from pipeline.stages.ma_profile import _forward

CONF = Path(__file__).resolve().parents[1] / "conf"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--data", default="wiki_summaries")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", type=Path, default=Path("results"))
    args = ap.parse_args()

    model_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{args.model}.yaml"))
    data_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "data" / f"{args.data}.yaml"))
    model, tok, device = load_model(model_cfg)
    ids = token_windows(tok, build_source(data_cfg), seq_len=args.seq_len, n_windows=args.batch).to(device)
    types = token_types(ids.cpu(), lambda t: False)
    texts = [[""] * args.seq_len] * args.batch
    layers = {str(i): m for i, m in enumerate(decoder_layers(model))}

    def bare() -> None:
        _forward(model, ids)

    def instrumented() -> None:
        prof = LayerProfile(num_layers(model))
        prof.begin_batch(types, texts)
        with capture(layers, lambda n, h: prof.observe(int(n), h)):
            _forward(model, ids)
        prof.end_batch()

    def paper_way() -> None:
        feats: dict[str, torch.Tensor] = {}
        with capture(layers, lambda n, h: feats.__setitem__(n, h.detach().clone().cpu().double())):
            _forward(model, ids)
        for h in feats.values():
            for row in h.abs().reshape(h.shape[0], -1):
                _top3, _median = row.sort(descending=True).values[:3], row.median()

    methods = {"bare": bare, "ma_profile": instrumented, "paper_way": paper_way}
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn()
        for r in range(args.repeats):
            for name, fn in methods.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    base = statistics.median(times["bare"])
    rows = [{"method": k, "median_s": statistics.median(v), "min_s": min(v), "ratio_to_bare": statistics.median(v) / base,
             "seq_len": args.seq_len, "batch": args.batch, "repeats": args.repeats,
             "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
             "threads": torch.get_num_threads()} for k, v in times.items()]
    dev = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    writer = ResultsWriter(args.results, "bench", model=args.model, revision=model_cfg.get("revision"),
                           dataset=args.data, seed=0, device=dev)
    path = writer.write("profile", rows, stage="bench_profile", condition=f"L{args.seq_len}xB{args.batch}")
    for r in rows:
        print(f"{r['method']:<11} {r['median_s']:.3f} s  x{r['ratio_to_bare']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
