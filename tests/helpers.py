"""Shared builders for tests: tiny models, a context without Hydra, planted outliers."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.core.loggers import Logger
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source
from pipeline.hooks.forward import patch
from pipeline.models.arch import get_arch, layer
from pipeline.models.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Summer is warm. Winter is cold. The cat sat on the mat. " * 40 + "\n") * 20


def tiny(arch: str = "llama", add_bos: bool = False):
    return tiny_model({"arch": arch, "hidden_size": 64, "num_layers": 4, "init_seed": 0, "add_bos": add_bos})


def make_ctx(tmp_path: Path, arch: str = "llama", text: str = TEXT, add_bos: bool = False,
             data_bos: str = "never", run_bos: str | None = None, catalog=None):
    """A Context without Hydra. ``add_bos``: the tokenizer adds <bos>; ``data_bos``: the run
    dataset's rule; ``run_bos``: the run-wide override (run.bos)."""
    from pipeline.context import Context
    from pipeline.core.catalog import Catalog

    model, tok = tiny(arch, add_bos)
    data_cfg = {"name": "tiny_text", "kind": "text", "text": text, "bos": data_bos, "joiner": "\n\n"}
    results = ResultsWriter(tmp_path / "results", "test_exp", model=f"tiny_{arch}", revision=None,
                            dataset="tiny_text", seed=0, device="cpu")
    return Context(model=model, tokenizer=tok, arch=get_arch(model), device=torch.device("cpu"),
                   model_name=f"tiny_{arch}", paper_key=None, data_cfg=data_cfg,
                   source=build_source(data_cfg), results=results, logger=Logger(),
                   experiment="test_exp", seed=0, bos=run_bos, catalog=catalog or Catalog.from_files())


@contextmanager
def planted_in_mlp(model, layer_idx: int, dim: int, value: float, position=0):
    """Like ``planted`` but added to the MLP output inside the layer, so the massive activation is
    part of the layer's own output and an intervention on that output can remove it."""

    def add(_name, h):
        h = h.clone()
        h[:, position, dim] += value
        return h

    with patch({"planted": layer(model, layer_idx).mlp}, add):
        yield


@contextmanager
def planted(model, layer_idx: int, dim: int, value: float, position=0):
    """Add ``value`` to one dim at one position of one decoder layer's output (a planted massive
    activation; the residual stream carries it on to the later layers)."""

    def add(_name, h):
        h = h.clone()
        pos = position(h) if callable(position) else position
        h[:, pos, dim] += value
        return h

    with patch({"planted": layer(model, layer_idx)}, add):
        yield


def plant_super_weight(model, layer_idx: int = 0, row: int = 5, col: int = 9, weight: float = 8.0,
                       boost: float = 80.0):
    """Edit a tiny model's weights so that it has a super weight W[row, col] in the down projection
    of ``layer_idx``: the weight is large and the down-projection input at ``col`` spikes.
    Works for Llama-style (gate/up) and GPT-2-style (c_fc) MLPs. Returns (layer, row, col)."""
    from pipeline.models.matrices import down_proj_matrix

    mlp = layer(model, layer_idx).mlp
    with torch.no_grad():
        if hasattr(mlp, "up_proj"):
            mlp.up_proj.weight[col] *= boost
            mlp.gate_proj.weight[col] *= boost
        else:  # GPT-2 Conv1D c_fc: weight (in, out)
            mlp.c_fc.weight[:, col] *= boost
            mlp.c_fc.bias[col] = boost
        down_proj_matrix(model, layer_idx)[row, col] = weight
    return layer_idx, row, col


def snapshot(model) -> dict:
    """A copy of every tensor of the state dict (for bit-identity checks after an edit)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, state: dict) -> bool:
    """True when every tensor equals its snapshot bit for bit."""
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def tiny_training(ckpt_dir, steps: int = 12, kill_at: int | None = None, **cfg_kw):
    """Train a tiny GPT-2 variant on random tokens (the SIGKILL test runs this in a child
    process: ``kill_at`` = the step at which it kills itself, after a checkpoint)."""
    import os
    import signal

    import numpy as np

    from pipeline.config.training import TrainConfig
    from pipeline.models.ma_gpt2 import MAGPTConfig, MAGPTForCausalLM
    from pipeline.train.data import TokenBatches
    from pipeline.train.loop import train

    torch.manual_seed(0)
    model = MAGPTForCausalLM(MAGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    rng = np.random.RandomState(0)
    source = TokenBatches({"train": rng.randint(0, 64, 5000), "val": rng.randint(0, 64, 1000)},
                          micro_batch=4, block_size=16, seed=0)
    cfg = TrainConfig(**{"steps": steps, "warmup_steps": 2, "eval_every": 1, "ckpt_every": 4, "lr": 3e-3,
                         "min_lr": 6e-5, "grad_accum": 2, **cfg_kw})

    def on_eval(step):
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"val_loss": float(model(input_ids=source.batch("val", 0), labels=source.batch("val", 0)).loss)}

    return model, train(model, source.batch, cfg, Path(ckpt_dir), device=torch.device("cpu"), seed=0, on_eval=on_eval)


def run_stage(name: str, ctx, **overrides):
    """Run stage ``name`` on ``ctx`` with its schema's defaults (``pipeline.config``) and ``overrides``,
    typed and checked as a composed config would be."""
    from pipeline.config import typed_args
    from pipeline.core.registry import get_stage

    return get_stage(name).run(ctx, typed_args(name, overrides))


def as_killed(writer) -> None:
    """What a SIGKILL leaves of a results writer: its staging folder, owned by a process that no
    longer exists (a test's "killed" run lives on in the test's own process otherwise)."""
    head, host, _pid, token = writer.staging.name.rsplit(".", 3)
    if writer.staging.is_dir():
        writer.staging.rename(writer.staging.with_name(f"{head}.{host}.999999999.{token}"))
