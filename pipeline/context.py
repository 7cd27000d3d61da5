"""The Context a stage runs against: built once per run from the composed Hydra config."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config import selected_stages
from pipeline.core.catalog import Catalog
from pipeline.core.loggers import Logger, build_logger
from pipeline.core.paper import paper_numbers
from pipeline.core.ranks import process_rank
from pipeline.core.results import ResultsWriter
from pipeline.data.text import (
    TextSource,
    build_source,
    dataset_windows,
    encode_prompt,
    resolve_bos,
    token_windows,
)
from pipeline.models.arch import ArchSpec, get_arch
from pipeline.models.load import load_model
from pipeline.validate import results_root


@dataclass(frozen=True)
class Context:
    """Everything a stage needs; stages never see the Hydra config itself."""

    model: torch.nn.Module
    tokenizer: Any
    arch: ArchSpec
    device: torch.device
    model_name: str
    paper_key: str | None
    data_cfg: Mapping[str, Any]
    source: TextSource
    results: ResultsWriter
    logger: Logger
    experiment: str
    seed: int
    catalog: Catalog = field(default_factory=Catalog.from_files)
    bos: str | None = None  # run.bos: overrides the BOS rule of every text of the run; None keeps each's

    def calibration_windows(self, name: str, split: str, seq_len: int, n: int) -> torch.Tensor:
        """(n, seq_len) windows of catalog dataset ``name``'s ``split`` (held-in text for
        calibration: set-to-mean values, the z search, SmoothQuant's maxima)."""
        return dataset_windows(self.tokenizer, name, seq_len=seq_len, n_windows=n, catalog=self.catalog,
                               split=split, bos=self.bos)

    def eval_windows(self, names, seq_len: int, n_windows: int | str) -> dict[str, torch.Tensor]:
        """Evaluation windows of each named catalog dataset. ``n_windows="all"``: every whole
        window; ``"protocol"``: each dataset's own ``eval_windows`` (paper A's code: WikiText-2
        all, C4 and PG-19 100; default all)."""
        return {name: dataset_windows(self.tokenizer, name, seq_len=seq_len, n_windows=n_windows,
                                      catalog=self.catalog, bos=self.bos) for name in names}

    def encode(self, prompt: str, bos: str = "auto") -> torch.Tensor:
        """(1, T) ids of one prompt: the run's BOS rule if set, else ``bos`` (default: follow the
        tokenizer, so a model whose tokenizer adds a BOS sees it, as in training)."""
        return encode_prompt(self.tokenizer, prompt, self.bos or bos)

    def adds_bos(self) -> bool:
        """Whether this run's texts start with the BOS token (lm-eval is told the same)."""
        return resolve_bos(self.tokenizer, self.bos or "auto", "zero-shot") != "never"

    def paper_numbers(self, paper: str) -> dict[str, Any] | None:
        """Published numbers of ``paper`` for this run's model (None unless it is a paper model)."""
        return paper_numbers(paper, self.paper_key, self.catalog)

    @property
    def out_dir(self) -> Path:
        """Where this experiment's CSVs (and figures/) go."""
        return self.results.path("x").parent

    def windows(self, seq_len: int, n: int, sampling: str = "sequential") -> torch.Tensor:
        """(n, seq_len) token windows of the run's dataset, with the dataset's BOS rule."""
        return token_windows(
            self.tokenizer, self.source, seq_len=seq_len, n_windows=n,
            bos=self.bos or self.data_cfg.get("bos", "auto"), sampling=sampling, seed=self.seed,
            joiner=self.data_cfg.get("joiner", "\n\n"),
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_setting(cfg: DictConfig, model_cfg: dict, data_cfg: dict, dtype: str) -> dict[str, Any]:
    """What decides a run's numbers, hashed into every row's ``setting``: the selected stages'
    arguments, the model config (with the dtype it resolved to) and the data config (split
    included), experiment and seed. Where the model runs (device, device_map) is not part of it."""
    stages = {name: dataclasses.asdict(args) for name, args in selected_stages(cfg).items()}
    model = {k: v for k, v in model_cfg.items() if k not in ("device", "device_map")}
    return {"experiment": cfg.run.experiment, "seed": int(cfg.run.seed), "stages": stages,
            "model": {**model, "dtype_resolved": dtype}, "data": data_cfg}


def build_context(cfg: DictConfig) -> Context:
    """Load model, data source, results writer and logger for one run."""
    root = results_root(cfg)  # before anything loads
    rank, local_rank, world = process_rank()  # under DDP every rank runs this; rank 0 alone records
    if rank:
        root = Path(tempfile.mkdtemp(prefix=f"pipeline-rank{rank}-"))
    seed_everything(int(cfg.run.seed))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if world > 1 and model_cfg.get("device") in (None, "auto") and torch.cuda.is_available():
        model_cfg["device"] = f"cuda:{local_rank}"  # one GPU per process
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    source = build_source(data_cfg)  # fails fast on a bad dataset, before the model loads
    model, tok, device = load_model(model_cfg)
    arch = get_arch(model)
    results = ResultsWriter(
        root, cfg.run.experiment, model=model_cfg["name"],
        revision=model_cfg.get("revision"), dataset=data_cfg["name"], seed=int(cfg.run.seed),
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        setting=run_setting(cfg, model_cfg, data_cfg, str(next(model.parameters()).dtype)),
    )
    logger = Logger() if rank else build_logger(
        OmegaConf.to_container(cfg.logger, resolve=True),
        run_name=f"{cfg.run.experiment}/{model_cfg['name']}/{data_cfg['name']}",
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    catalog = Catalog(OmegaConf.to_container(cfg.catalog, resolve=True)) if "catalog" in cfg else Catalog.from_files()
    return Context(
        model=model, tokenizer=tok, arch=arch, device=device, model_name=model_cfg["name"],
        paper_key=model_cfg.get("paper_key"), data_cfg=data_cfg, source=source, results=results,
        logger=logger, experiment=cfg.run.experiment, seed=int(cfg.run.seed), catalog=catalog,
        bos=cfg.run.get("bos"),
    )
