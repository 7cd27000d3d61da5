"""Benchmark: perplexity evaluation vs a bare forward pass over the same windows (issue 3, part 5).

In one run, interleaved over repeats (shared, noisy machines: only ratios within a run count):
  bare        -- forward passes over the windows (logits computed, nothing else)
  perplexity  -- pipeline.evaluate.perplexity on the same windows (forward + float32 log-softmax
                 + NLL accumulation, progress bar included)
Writes results/bench/eval.csv (median seconds and the ratio to bare). Target: within 5%.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.bench import (
    bench_parser,
    device_name,
    load_bench_model,
    ratio_rows,
    time_interleaved,
)
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source, data_config, token_windows
from pipeline.evaluation.perplexity import perplexity

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    ap = bench_parser(__doc__, seq_len=1024, batch=1, repeats=3)
    ap.add_argument("--windows", type=int, default=4)
    args = ap.parse_args()
    model_cfg, model, tok, device = load_bench_model(args.model)
    cfg = data_config(args.data)
    windows = token_windows(tok, build_source(cfg), seq_len=args.seq_len, n_windows=args.windows,
                            bos=cfg.get("bos", "never"), joiner=cfg.get("joiner", "\n\n"))

    @torch.inference_mode()
    def bare() -> None:
        for s in range(0, len(windows), args.batch):
            model(input_ids=windows[s:s + args.batch].to(device), use_cache=False).logits.sum().item()

    def ppl() -> None:
        perplexity(model, windows, batch_size=args.batch, device=device, desc="bench")

    methods = {"bare": bare, "perplexity": ppl}
    times = time_interleaved(methods, args.repeats, device)
    rows = ratio_rows(times, "bare", seq_len=args.seq_len, windows=args.windows, batch=args.batch,
                      repeats=args.repeats, dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    for r in rows:
        r["tokens_per_s"] = windows.numel() / r["median_s"]
    dev = device_name(device)
    writer = ResultsWriter(args.results, "bench", model=args.model, revision=model_cfg.get("revision"),
                           dataset=args.data, seed=0, device=dev, setting={**vars(args), "device": dev})
    path = writer.write("eval", rows, stage="bench_eval", condition=f"L{args.seq_len}xN{args.windows}xB{args.batch}")
    writer.commit({k: str(v) for k, v in vars(args).items()})
    for r in rows:
        print(f"{r['method']:<11} {r['median_s']:.3f} s  x{r['ratio_to_bare']:.3f}  {r['tokens_per_s']:.0f} tok/s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
