"""Training checkpoints: weights, optimizer, step and history written together with one rename
(:func:`save_checkpoint`), read back with every part verified and a damaged one falling back to
the ``.old`` copy a kill left (:func:`load_checkpoint`); a checkpoint of another setting is never
resumed (:func:`same_run`), except for how far to train: extending ``steps`` resumes."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.config.training import TrainConfig
from pipeline.core.disk import replacing
from pipeline.core.errors import PipelineError


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
                     expect: dict | None) -> tuple[int, list[dict], int]:
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
    planned = int((meta.get("config") or {}).get("steps", meta["step"]))
    return int(meta["step"]), list(meta["history"]), planned


def load_checkpoint(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    expect: dict | None = None) -> tuple[int, list[dict], int]:
    """(step, history, the steps its run was set to train) of the checkpoint in ``out``, its
    weights and optimizer state loaded into ``model`` and ``opt``; (0, [], 0) if there is none.
    Every part is verified as it loads: a damaged ``out`` (a missing or truncated file) falls back
    to the ``.old`` one a kill left behind, said in one line; when none is sound the run stops in
    one line instead of silently starting over (and overwriting the weights). With ``expect``
    (this run's config and seed), a checkpoint of another setting is refused in one line (an
    explicit shared ``checkpoint_dir`` resumed the other's run)."""
    damaged = []
    for where in (out, out.with_name(out.name + ".old")):
        if not where.exists():
            continue
        try:
            step, history, planned = _read_checkpoint(where, model, opt, expect)
        except CheckpointMismatch:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read a part is damage
            damaged.append(f"{where.name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}")
            continue
        if damaged:
            print(f"[train] checkpoint {damaged[0]} is damaged; resuming from {where} at step {step}", flush=True)
        return step, history, planned
    if damaged:
        raise PipelineError(f"checkpoint {out} is damaged ({'; '.join(damaged)}) and there is no sound older one: "
                            "remove it to start over")
    return 0, [], 0


def point_latest(link: Path, target: Path) -> None:
    """``link`` -> ``target`` as a symlink replaced atomically: a stable name for the last model
    trained under a setting-keyed folder (model configs such as ``trained_ma_gpt2_default`` use it)."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)
