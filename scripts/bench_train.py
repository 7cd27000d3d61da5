"""Benchmark: the training loop vs a bare minimal loop, and the emergence callback's cost.

In one run, interleaved over repeats (shared, noisy machines: only ratios within a run count),
on the same model (a fresh ``ma_gpt2`` of ``--model``'s size) and the same batches:
  bare   -- zero_grad, forward with labels, backward, clip, AdamW step: ``--steps`` times
  loop   -- pipeline.train.loop.train for ``--steps`` steps (schedule, freeze rules, progress bar,
            finite-loss check), no evaluation and no checkpoint inside the timed steps
  val_loss -- the validation loss on 4 fixed batches (what any training run evaluates)
  profile_callback -- what the emergence curve adds: the massive-activation profile of a fixed
            batch and the attention shares; each one's share of training time is reported at the
            default cadence (one per ``--eval-every`` steps)
Writes results/bench/train.csv (median seconds, ratio to bare, tokens/s; MFU on CUDA). Targets: loop <= x1.05,
profile callback <= 2% of training time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pipeline.analysis.profile import profile_layers
from pipeline.bench import bench_parser, device_name, load_bench_model, ratio_rows, time_interleaved
from pipeline.config.training import TrainConfig
from pipeline.context import Context
from pipeline.core.catalog import Catalog
from pipeline.core.loggers import Logger
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source, data_config
from pipeline.models.arch import get_arch
from pipeline.stages import train_lm
from pipeline.train.corpus import corpus_tokens
from pipeline.train.data import TokenBatches
from pipeline.train.loop import make_optimizer, train

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


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
    cfg = TrainConfig(steps=args.steps, micro_batch=args.batch, block_size=args.seq_len, lr=6e-4, min_lr=6e-5,
                      warmup_steps=2, eval_every=10**9, ckpt_every=10**9, save_at_end=False)
    model.train()
    opt = make_optimizer(model, cfg)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"  # as the loop does
                else torch.autocast("cpu", enabled=False))

    def bare() -> None:
        for step in range(args.steps):
            x = source.batch("train", step, 0).to(device)
            with autocast:
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def loop() -> None:
        with tempfile.TemporaryDirectory() as tmp:  # fresh: nothing to resume; the final save is outside
            train(model, source.batch, cfg, Path(tmp) / "ckpt", device=device, seed=0, desc="bench")

    val = [source.batch("val", 0, i) for i in range(4)]
    probe = source.batch("val", 1, 0)[:4]

    @torch.no_grad()
    def val_loss() -> None:
        model.eval()
        sum(float(model(input_ids=v.to(device), labels=v.to(device)).loss) for v in val)
        model.train()

    @torch.no_grad()
    def profile_callback() -> None:
        model.eval()
        profile_layers(ctx, probe, batch_size=4, abs_threshold=100.0, rel_threshold=1000.0, max_hits=64,
                                delimiters=[".", "\n"], quiet=True)
        train_lm.attention_shares(ctx, probe)
        model.train()

    times = time_interleaved({"bare": bare, "loop": loop, "val_loss": val_loss, "profile_callback": profile_callback},
                             args.repeats, device)
    rows = ratio_rows(times, "bare", steps=args.steps, seq_len=args.seq_len, batch=args.batch, repeats=args.repeats)
    trainers = ("bare", "loop")
    n_params = sum(p.numel() for p in model.parameters())
    peak = peak_bf16_flops(device)  # None on a CPU: MFU is reported on CUDA only
    per_step = {r["method"]: r["median_s"] / (args.steps if r["method"] in trainers else 1) for r in rows}
    for r in rows:
        r["tokens_per_s"] = args.steps * args.batch * args.seq_len / r["median_s"] if r["method"] in trainers else None
        # model FLOPs utilisation, nanoGPT's estimate: 6 N + 12 L d T FLOPs per token, over the peak
        per_token = 6 * n_params + 12 * model.config.n_layer * model.config.n_embd * args.seq_len
        r["mfu"] = r["tokens_per_s"] * per_token / peak if peak and r["tokens_per_s"] else None
        r["share_of_training_at_eval_every"] = (per_step[r["method"]] / (args.eval_every * per_step["loop"])
                                                if r["method"] not in trainers else None)
    dev = device_name(device)
    writer = ResultsWriter(args.results, "bench", model=args.model, revision=None, dataset=args.data, seed=0,
                           device=dev, setting={**{k: str(v) for k, v in vars(args).items()}, "device": dev})
    path = writer.write("train", rows, stage="bench_train", condition=f"L{args.seq_len}xB{args.batch}xS{args.steps}")
    writer.commit({k: str(v) for k, v in vars(args).items()})
    for r in rows:
        print(f"{r['method']:<14} {r['median_s']:.3f} s  x{r['ratio_to_bare']:.3f}")
    for r in rows[2:]:
        print(f"{r['method']} share of training at eval_every={args.eval_every}:"
              f" {r['share_of_training_at_eval_every']:.2%}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
