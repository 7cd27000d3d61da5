"""Benchmark: paper C's data generator and training step against the official ones, in one run.

  generator    -- pipeline.data.bigram.generate (vectorised over the batch) vs reference_batch, the
                  official per-token loop's algorithm (one rng.choice per token), on the same task
                  and batch size; with ``--official DIR`` (a checkout of albietz/transformer-birth)
                  also the official ``ihead_data.Dataset.gen_batch`` itself, on its own meta.pkl
  train_step   -- one SGD step of our simplified model (pipeline.models.birth, the README setting's
                  flags) vs the official ``ihead_basic_model.Transformer`` (from ``--official``),
                  same d, batch, loss on counter >= 2, interleaved
Shared, noisy machines: only ratios within a run count. Writes results/bench/birth.csv. Target:
the generator >= 50x the per-token loop's throughput.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.bench import bench_parser, device_name, ratio_rows, time_interleaved
from pipeline.core.results import ResultsWriter
from pipeline.data.bigram import BigramTask, generate, reference_batch, shakespeare_stats
from pipeline.models.birth import SIMPLIFIED_FROZEN, BirthConfig, BirthForCausalLM
from pipeline.train.data import BigramBatches


def official_modules(path: Path):
    """The official repository's data and model modules, imported from its checkout (its code is
    run, never copied here); it reads data/meta.pkl relative to the working directory."""
    sys.path.insert(0, str(path))
    import ihead_basic_model  # noqa: PLC0415
    import ihead_data  # noqa: PLC0415

    return ihead_data, ihead_basic_model


def main() -> None:
    ap = bench_parser(__doc__, seq_len=256, batch=512, repeats=3)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--official", type=Path, default=None, help="a checkout of albietz/transformer-birth")
    args = ap.parse_args()
    stats, task = shakespeare_stats(), BigramTask(k=5, seq_len=args.seq_len)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods = {"generate": lambda: generate(stats, task, np.random.default_rng(0), args.batch),
               "reference_loop": lambda: reference_batch(stats, task, np.random.default_rng(0), args.batch)}
    data_mod = model_mod = None
    if args.official:
        data_mod, model_mod = official_modules(args.official)
        cwd = os.getcwd()
        os.chdir(args.official)  # meta.pkl
        ds = data_mod.Dataset(data_mod.DataArgs(k=5, seq_length=args.seq_len, fixed_special_toks=True))
        os.chdir(cwd)
        methods["official_gen_batch"] = lambda: ds.gen_batch(np.random.default_rng(0), args.batch)
    gen_times = time_interleaved(methods, args.repeats, torch.device("cpu"))
    rows = [dict(r, part="generator", sequences_per_s=args.batch / r["median_s"])
            for r in ratio_rows(gen_times, "reference_loop", batch=args.batch, seq_len=args.seq_len)]

    source = BigramBatches(stats, task, args.batch, loss_head_only=True)
    x, y, c = (t.to(device) for t in source.sample("train", 0))
    frozen = [*SIMPLIFIED_FROZEN, "tok_embeddings", "output"]
    ours = BirthForCausalLM(BirthConfig(vocab_size=stats.vocab_size, dim=args.dim, n_positions=args.seq_len,
                                        frozen=frozen)).to(device)
    steps = {"ours": _stepper(ours, lambda: ours(input_ids=x, targets=y.masked_fill(c < 2, -100)).loss)}
    if model_mod is not None:
        theirs = model_mod.Transformer(model_mod.ModelArgs(vocab_size=stats.vocab_size, dim=args.dim,
                                                          max_length=args.seq_len, freeze_embeddings=True,
                                                          freeze_output=True)).to(device)
        steps["official"] = _stepper(theirs, lambda: torch.nn.functional.cross_entropy(theirs(x)[c >= 2], y[c >= 2]))
    step_times = time_interleaved(steps, args.repeats, device)
    base = "official" if "official" in steps else "ours"
    rows += [dict(r, part="train_step", sequences_per_s=args.batch / r["median_s"])
             for r in ratio_rows(step_times, base, batch=args.batch, seq_len=args.seq_len, dim=args.dim)]
    dev = device_name(device)
    writer = ResultsWriter(args.results, "bench", model="birth_simplified", revision=None, dataset="shakespeare",
                           seed=0, device=dev, setting={**{k: str(v) for k, v in vars(args).items() if k != "official"},
                                                "official": str(bool(args.official)), "device": dev})
    path = writer.write("birth", rows, stage="bench_birth", condition=f"T{args.seq_len}xB{args.batch}xd{args.dim}")
    writer.commit({k: str(v) for k, v in vars(args).items()})
    for r in rows:
        ratio = r.get("ratio_to_reference_loop", r.get(f"ratio_to_{base}"))
        print(f"{r['part']:<11} {r['method']:<19} {r['median_s']:.4f} s  x{ratio:.4f}"
              f"  {r['sequences_per_s']:,.0f} seq/s")
    print(f"wrote {path}")


def _stepper(model: torch.nn.Module, loss_fn):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    return step


if __name__ == "__main__":
    main()
