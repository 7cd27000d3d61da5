"""The training loop, as readable as nanoGPT's: gradient accumulation, bf16 autocast on CUDA,
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
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.config.training import TrainConfig
from pipeline.core.disk import replacing
from pipeline.core.errors import PipelineError
from pipeline.core.ranks import process_rank


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
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
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


# --- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                    history: list[dict], cfg: TrainConfig, seed: int) -> None:
    """Weights (save_pretrained), optimizer, step and history into ``out`` with one rename (with
    a record of the config and the run's seed)."""
    keeps = "the previous checkpoint is kept" if out.exists() else "no checkpoint was written"
    with replacing(out, "checkpoint", keeps=keeps) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        record = {"step": step, "history": history, "config": {**asdict(cfg), "seed": seed}}
        (tmp / "train_state.json").write_text(json.dumps(record))


# what may differ between a checkpoint and the run that resumes it: how far to train, and where
RESUMABLE_CHANGES = ("steps", "checkpoint_dir")


def same_run(stored: dict, current: dict) -> str | None:
    """None if a checkpoint written under ``stored`` (its config and seed) may be resumed by a run
    of ``current``; else the first difference, for the message."""
    for key in sorted(set(stored) | set(current)):
        if key not in RESUMABLE_CHANGES and stored.get(key, "(absent)") != current.get(key, "(absent)"):
            return f"{key} {stored.get(key, '(absent)')!r} there, {current.get(key, '(absent)')!r} here"
    return None


class CheckpointMismatch(PipelineError):
    """A sound checkpoint that is not this run's (another setting, another model): never resumed,
    never replaced by falling back to an older one."""


def _read_checkpoint(where: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     expect: dict | None) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    meta = json.loads((where / "train_state.json").read_text())
    differs = same_run(meta.get("config") or {}, expect) if expect is not None else None
    if differs:
        raise CheckpointMismatch(f"checkpoint {where} was written by another setting ({differs}): "
                                 "give this run its own checkpoint_dir, or remove that one to start over")
    weights = load_file(str(where / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)  # a tied head is saved once
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise CheckpointMismatch(f"checkpoint {where} does not fit this model (missing "
                                 f"{sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}): a different "
                                 "model config? remove it to start over")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    opt.load_state_dict(torch.load(where / "optimizer.pt", weights_only=True))
    return int(meta["step"]), list(meta["history"])


def load_checkpoint(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    expect: dict | None = None) -> tuple[int, list[dict]]:
    """(step, history) of the checkpoint in ``out``, its weights and optimizer state loaded into
    ``model`` and ``opt``; (0, []) if there is none. Every part is verified as it loads: a damaged
    ``out`` (a missing or truncated file) falls back to the ``.old`` one a kill left behind, said in
    one line; when none is sound the run stops in one line instead of silently starting over (and
    overwriting the weights). With ``expect`` (this run's config and seed), a checkpoint of another
    setting is refused in one line (an explicit shared ``checkpoint_dir`` resumed the other's run)."""
    damaged = []
    for where in (out, out.with_name(out.name + ".old")):
        if not where.exists():
            continue
        try:
            step, history = _read_checkpoint(where, model, opt, expect)
        except CheckpointMismatch:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read a part is damage
            damaged.append(f"{where.name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}")
            continue
        if damaged:
            print(f"[train] checkpoint {damaged[0]} is damaged; resuming from {where} at step {step}", flush=True)
        return step, history
    if damaged:
        raise PipelineError(f"checkpoint {out} is damaged ({'; '.join(damaged)}) and there is no sound older one: "
                            "remove it to start over")
    return 0, []


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


def point_latest(link: Path, target: Path) -> None:
    """``link`` -> ``target`` as a symlink replaced atomically: a stable name for the last model
    trained under a setting-keyed folder (model configs such as ``trained_ma_gpt2_default`` use it)."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


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
    opt = make_optimizer(model, cfg)
    start, history = load_checkpoint(ckpt_dir, model, opt, expect=json.loads(json.dumps({**asdict(cfg), "seed": seed})))
    net = model
    if world > 1:  # each rank takes its own micro-batches: global index micro * world + rank
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if start:
        print(f"[train] resuming at step {start} from {ckpt_dir}", flush=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    # freeze_until only holds back parameters that train at all: a model's own frozen ones stay frozen
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}
    bar = tqdm(range(start, cfg.steps), desc=desc, unit="step", initial=start, total=cfg.steps,
               disable=rank != 0)
    t0, tokens = time.perf_counter(), 0
    if on_eval and rank == 0 and start == 0 and cfg.eval_at_start:
        model.eval()
        with torch.no_grad():
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
            with torch.no_grad():
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
