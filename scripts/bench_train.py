"""Benchmark: the training loop vs a bare minimal loop, and the emergence callback's cost.

In one run, interleaved over repeats (shared, noisy machines: only ratios within a run count),
on the same model (a fresh ``ma_gpt2`` of ``--model``'s size) and the same batches:
  bare   -- zero_grad, forward with labels, backward, clip, AdamW step: ``--steps`` times
  loop   -- pipeline.train.loop.train for ``--steps`` steps (schedule, freeze rules, progress bar,
            finite-loss check), no evaluation and no checkpoint inside the timed steps
  eval   -- one emergence callback of stage train_lm (validation loss on 4 batches, the profile
            of a fixed batch, attention shares); its share of training time is reported at the
            default cadence (one per ``--eval-every`` steps)
Writes results/bench/train.csv (median seconds, ratio to bare, tokens/s). Targets: loop <= x1.05,
callback <= 2% of training time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pipeline.bench import bench_parser, device_name, load_bench_model, ratio_rows, time_interleaved
from pipeline.context import Context
from pipeline.core.catalog import Catalog
from pipeline.core.loggers import Logger
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source, data_config
from pipeline.models.arch import get_arch
from pipeline.stages import train_lm
from pipeline.train.corpus import corpus_tokens
from pipeline.train.data import TokenBatches
from pipeline.train.loop import TrainConfig, make_optimizer, train


def main() -> None:
    ap = bench_parser(__doc__, seq_len=256, batch=8, repeats=3)
    ap.set_defaults(model="ma_gpt2_offline")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=25)
    args = ap.parse_args()
    model_cfg, model, tok, device = load_bench_model(args.model)
    data_cfg = data_config(args.data)
    results = ResultsWriter(Path(tempfile.mkdtemp()), "bench_train", model=args.model, revision=None,
                            dataset=args.data, seed=0, device="x")
    ctx = Context(model=model, tokenizer=tok, arch=get_arch(model), device=device, model_name=args.model,
                  paper_key=None, data_cfg=data_cfg, source=build_source(data_cfg), results=results,
                  logger=Logger(), experiment="bench", seed=0, catalog=Catalog.from_files())
    source = TokenBatches(corpus_tokens(tok, [args.data], ctx.catalog), micro_batch=args.batch, block_size=args.seq_len)
    cfg = TrainConfig(max_steps=args.steps, micro_batch=args.batch, block_size=args.seq_len, warmup_steps=2,
                      decay_steps=args.steps, eval_every=10**9, ckpt_every=10**9, save_at_end=False)
    model.train()
    opt = make_optimizer(model, cfg)

    def bare() -> None:
        for step in range(args.steps):
            x = source.batch("train", step, 0).to(device)
            model(input_ids=x, labels=x).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def loop() -> None:
        with tempfile.TemporaryDirectory() as tmp:  # fresh: nothing to resume; the final save is outside
            train(model, source.batch, cfg, Path(tmp) / "ckpt", device=device, desc="bench")

    val = [source.batch("val", 0, i) for i in range(4)]
    probe = source.batch("val", 1, 0)[:4]

    @torch.no_grad()
    def callback() -> None:
        model.eval()
        sum(float(model(input_ids=v.to(device), labels=v.to(device)).loss) for v in val)
        train_lm.profile_layers(ctx, probe, batch_size=4, abs_threshold=100.0, rel_threshold=1000.0, max_hits=64,
                                delimiters=[".", "\n"], quiet=True)
        train_lm.attention_shares(ctx, probe)
        model.train()

    times = time_interleaved({"bare": bare, "loop": loop, "eval_callback": callback}, args.repeats, device)
    rows = ratio_rows(times, "bare", steps=args.steps, seq_len=args.seq_len, batch=args.batch, repeats=args.repeats)
    per_step = {r["method"]: r["median_s"] / (args.steps if r["method"] != "eval_callback" else 1) for r in rows}
    for r in rows:
        r["tokens_per_s"] = args.steps * args.batch * args.seq_len / r["median_s"] if r["method"] != "eval_callback" else None
        r["share_of_training_at_eval_every"] = (per_step["eval_callback"] / (args.eval_every * per_step["loop"])
                                                if r["method"] == "eval_callback" else None)
    dev = device_name(device)
    writer = ResultsWriter(args.results, "bench", model=args.model, revision=None, dataset=args.data, seed=0,
                           device=dev, setting={**{k: str(v) for k, v in vars(args).items()}, "device": dev})
    path = writer.write("train", rows, stage="bench_train", condition=f"L{args.seq_len}xB{args.batch}xS{args.steps}")
    writer.commit({k: str(v) for k, v in vars(args).items()})
    for r in rows:
        print(f"{r['method']:<14} {r['median_s']:.3f} s  x{r['ratio_to_bare']:.3f}")
    print(f"callback share of training at eval_every={args.eval_every}: {rows[2]['share_of_training_at_eval_every']:.2%}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
