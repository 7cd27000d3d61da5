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

from pathlib import Path

import torch

from pipeline.analysis.massive import LayerProfile
from pipeline.bench import (
    bench_parser,
    device_name,
    load_bench_model,
    ratio_rows,
    time_interleaved,
)
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source, data_config, token_windows
from pipeline.hooks.forward import capture
from pipeline.hooks.positions import token_types
from pipeline.models.arch import decoder_layers, num_layers
from pipeline.models.load import forward_without_logits

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    args = bench_parser(__doc__, seq_len=512, batch=2, repeats=5).parse_args()
    model_cfg, model, tok, device = load_bench_model(args.model)
    data_cfg = data_config(args.data)
    ids = token_windows(tok, build_source(data_cfg), seq_len=args.seq_len, n_windows=args.batch).to(device)
    types = token_types(ids.cpu(), lambda t: False)
    texts = [[""] * args.seq_len] * args.batch
    layers = {str(i): m for i, m in enumerate(decoder_layers(model))}

    def bare() -> None:
        forward_without_logits(model, ids)

    def instrumented() -> None:
        prof = LayerProfile(num_layers(model))
        prof.begin_batch(types, texts)
        with capture(layers, lambda n, h: prof.observe(int(n), h)):
            forward_without_logits(model, ids)
        prof.end_batch()

    def paper_way() -> None:
        feats: dict[str, torch.Tensor] = {}
        with capture(layers, lambda n, h: feats.__setitem__(n, h.detach().clone().cpu().double())):
            forward_without_logits(model, ids)
        for h in feats.values():
            for row in h.abs().reshape(h.shape[0], -1):
                _top3, _median = row.sort(descending=True).values[:3], row.median()

    methods = {"bare": bare, "ma_profile": instrumented, "paper_way": paper_way}
    with torch.inference_mode():
        times = time_interleaved(methods, args.repeats, device)
    rows = ratio_rows(times, "bare", seq_len=args.seq_len, batch=args.batch, repeats=args.repeats,
                      dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    dev = device_name(device)
    writer = ResultsWriter(args.results, "bench", model=args.model, revision=model_cfg.get("revision"),
                           dataset=args.data, seed=0, device=dev, setting={**vars(args), "device": dev})
    path = writer.write("profile", rows, stage="bench_profile", condition=f"L{args.seq_len}xB{args.batch}")
    writer.commit({k: str(v) for k, v in vars(args).items()})
    for r in rows:
        print(f"{r['method']:<11} {r['median_s']:.3f} s  x{r['ratio_to_bare']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
