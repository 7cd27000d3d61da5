"""The training loop, as readable as nanoGPT's: gradient accumulation, bf16 autocast on CUDA
(``precision``, evaluation included), TF32, fused AdamW on CUDA, ``torch.compile`` (``compile``),
clipping, warmup + cosine, AdamW or SGD with momentum, ``freeze_until`` (paper C), DDP under
torchrun, atomic checkpoints, and an exact resume.

Exact resume without saving any RNG state: a batch is a pure function of (seed, step, micro
step, rank) (see :mod:`pipeline.train.data`), the model has no dropout, and the checkpoint holds
the weights, the optimizer state, the step and the history of logged rows, written together
with one rename. A run killed at any moment restarts from its last checkpoint and produces the
same losses, bit for bit on a CPU, as a run that was never interrupted (tested with SIGKILL).
A NaN or inf loss, or non-finite weights after an update (checked before every checkpoint is
written), stop the run with one line; the last good checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.config.training import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.core.ranks import process_rank
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine to ``min_lr`` over ``decay_steps`` (nanoGPT; null
    ``min_lr`` / ``decay_steps``: ``lr`` / ``steps``, :attr:`TrainConfig.lr_floor` / ``decay_over``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.decay_over:
        return cfg.lr_floor
    ratio = (step - cfg.warmup_steps) / max(1, cfg.decay_over - cfg.warmup_steps)
    return cfg.lr_floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.lr_floor)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA, as nanoGPT) or SGD; weight decay on every matrix (``decay: matrices``,
    nanoGPT: not on norms and biases) or on every parameter (``decay: all``, paper C's official code)."""
    train = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in train if cfg.decay == "all" or p.dim() >= 2]
    rest = [p for p in train if not (cfg.decay == "all" or p.dim() >= 2)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        on_cuda = bool(train) and train[0].device.type == "cuda"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=on_cuda or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise PipelineError(f"optimizer must be adamw or sgd, not {cfg.optimizer!r}")


def freeze_rules(rules: Sequence[str]) -> list[tuple[int, str]]:
    """("N:prefix", ...) -> [(N, prefix), ...]; a malformed rule fails in one line."""
    out = []
    for rule in rules:
        until, _, prefix = str(rule).partition(":")
        if not until.isdigit() or not prefix:
            raise PipelineError(f"freeze_until entry {rule!r}: expected 'STEP:parameter.prefix'")
        out.append((int(until), prefix))
    return out


def frozen_at(step: int, rules: Sequence[str]) -> list[str]:
    """Parameter-name prefixes frozen at ``step``: a rule "N:prefix" freezes it before step N."""
    return [prefix for until, prefix in freeze_rules(rules) if step < until]


def check_finite(model: torch.nn.Module, row: dict[str, Any], done: int, ckpt_dir: Path) -> None:
    """Stop before a bad update reaches a checkpoint: the loss of step k can be finite while the
    update it drove leaves NaN / inf weights, and a checkpoint written then was "the last good one"
    (34 of 39 tensors non-finite, measured). Checked on evaluation steps too (val_loss)."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    val = row.get("val_loss")
    if bad or (isinstance(val, float) and not math.isfinite(val)):
        what = f"{len(bad)} weight tensors are not finite (e.g. {bad[0]})" if bad else f"val_loss is {val}"
        raise PipelineError(f"{what} after step {done}: stopped before saving; the last good checkpoint is "
                            f"kept in {ckpt_dir} (lower the learning rate or check the data)")


# --- the loop ---------------------------------------------------------------------------------
def distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun or a multi-task SLURM job (WORLD_SIZE > 1, see
    :mod:`pipeline.core.ranks`) the process group is started here:
    NCCL on GPUs (one per process, LOCAL_RANK), gloo on CPUs."""
    _, local_rank, world = process_rank()
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the body first (preparing what every rank reads), the other ranks wait at a
    barrier and then run it (finding the work done). Not distributed: just the body."""
    rank, world = distributed()
    if world > 1 and rank:
        torch.distributed.barrier()
    yield
    if world > 1 and not rank:
        torch.distributed.barrier()


def model_inputs(batch: torch.Tensor | dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch as the model's keyword arguments: a (B, T) tensor of ids is language modelling
    (``labels = input_ids``, shifted inside the model); a dict is passed as it is (paper C's
    ``input_ids`` and aligned ``targets`` with -100 where no loss is taken)."""
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    ids = batch.to(device)
    return {"input_ids": ids, "labels": ids}


def train(model: torch.nn.Module, batch: Callable[[str, int, int], torch.Tensor],
          cfg: TrainConfig, ckpt_dir: Path, *, device: torch.device, seed: int,
          on_eval: Callable[[int], dict[str, Any]] | None = None, desc: str = "train") -> list[dict]:
    """Train ``model`` to ``cfg.steps``, resuming from ``ckpt_dir`` when it holds a checkpoint.

    ``cfg`` is :class:`pipeline.config.training.TrainConfig` (a training stage passes its own
    arguments, which are one); ``seed`` is the run's, recorded in the checkpoint (``batch`` is a
    pure function of it). ``batch(split, step, micro)`` gives one micro-batch
    (:func:`model_inputs`); ``on_eval(step)`` returns extra columns (validation loss, the
    massive-activation profile, ...) every ``eval_every`` steps and at the end. Returns the
    history: one row per step with ``loss`` and ``lr``, evaluation columns on the evaluation steps."""
    rank, world = distributed()
    if cfg.grad_accum % world:
        raise PipelineError(f"grad_accum={cfg.grad_accum} micro-batches per step cannot be shared by {world} ranks: "
                            "make it a multiple of the number of GPUs")
    accum = cfg.grad_accum // world  # this rank's share: tokens per step do not depend on the GPU count
    model.to(device).train()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    opt = make_optimizer(model, cfg)
    expect = json.loads(json.dumps({**asdict(cfg), "seed": seed}))  # as it reads back from the file
    start, history, planned = load_checkpoint(ckpt_dir, model, opt, expect=expect)
    net = torch.compile(model) if cfg.compile else model  # compiled before DDP wraps it (nanoGPT)
    if world > 1:  # each rank takes its own micro-batches: global index micro * world + rank
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if start:
        print(f"[train] resuming at step {start} from {ckpt_dir}", flush=True)
        if cfg.steps != planned and not cfg.decay_steps and rank == 0:
            print(f"[train] extending a {planned}-step run to {cfg.steps} steps: the cosine schedule now runs over "
                  f"{cfg.steps} steps (the first {start} followed the {planned}-step one); set decay_steps for a "
                  "schedule that does not depend on steps", flush=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.precision == "bf16"
                else contextlib.nullcontext())
    # freeze_until only holds back parameters that train at all: a model's own frozen ones stay frozen
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}
    bar = tqdm(range(start, cfg.steps), desc=desc, unit="step", initial=start, total=cfg.steps,
               disable=rank != 0)
    t0, tokens = time.perf_counter(), 0
    if on_eval and rank == 0 and start == 0 and cfg.eval_at_start:
        model.eval()
        with torch.no_grad(), autocast:
            history.append({"step": 0, **on_eval(0)})
        model.train()
    for step in bar:
        frozen = frozen_at(step, cfg.freeze_until)
        for name, p in names.items():
            p.requires_grad_(not any(name.startswith(f) for f in frozen))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = torch.zeros((), device=device)
        for micro in range(accum):
            inputs = model_inputs(batch("train", step, micro * world + rank), device)
            sync = micro == accum - 1 or world == 1  # DDP: all-reduce once, on the last micro-batch
            with contextlib.nullcontext() if sync else net.no_sync():
                with autocast:
                    loss = net(**inputs).loss / accum
                loss.backward()
            total += loss.detach()
            tokens += inputs["input_ids"].numel() * world
        if world > 1:  # the logged loss is the mean over ranks
            torch.distributed.all_reduce(total)
            total /= world
        total = float(total)
        if not math.isfinite(total):
            raise PipelineError(f"loss is {total} at step {step}: stopped; the last good checkpoint is kept in "
                                f"{ckpt_dir} (lower the learning rate or check the data)")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        row: dict[str, Any] = {"step": step + 1, "loss": total, "lr": lr_at(step, cfg)}
        done = step + 1
        if on_eval and rank == 0 and (done % cfg.eval_every == 0 or done == cfg.steps):
            model.eval()
            with torch.no_grad(), autocast:
                row.update(on_eval(done))
            model.train()
        check_finite(model, row, done, ckpt_dir)
        history.append(row)
        rate = tokens / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{rate:,.0f}")
        if rank == 0 and (done % cfg.ckpt_every == 0 or (done == cfg.steps and cfg.save_at_end)):
            save_checkpoint(ckpt_dir, model, opt, done, history, cfg, seed)
    model.eval()
    return history
