"""The notebook API: the pipeline's models, measurements and experiments from Python, with the same
config, loaders, arch specs and detectors the Hydra runs use (nothing is re-implemented here).

    from pipeline import api
    lab = api.load("smollm2_135m")               # a model of conf/model, a Hub id, or a local folder
    h = lab.activations("Summer is warm. Winter is cold.")       # {layer: (tokens, width) tensor}
    lab.profile("Summer is warm. Winter is cold.")               # per layer: top-1/2/3, median, where
    lab.super_weights()                                           # paper B's detector: a DataFrame
    with lab.set_activation(layer=3, dims=[507], positions=[0], value=0.0):
        lab.loss("Summer is warm. Winter is cold.")              # the model with one activation edited
    api.run("massive_activations_default", "model=smollm2_135m")  # a whole experiment: its tables

Layers are 0-based here as everywhere in the code (the report and figures print them 1-based).
A run of :func:`run` writes to ``outputs/results/`` unless told otherwise, never to the record.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.core.paths import CONF_DIR


def compose(*overrides: str, experiment: str = "massive_activations_default"):
    """The Hydra config of one run (what ``python -m pipeline <overrides>`` would run), checked as
    the command line checks it: a wrong override fails in one line before anything loads."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.__main__ import check_choices, check_root_keys
    from pipeline.config import selected_stages
    from pipeline.validate import validate

    args = [f"experiment={experiment}", *overrides]
    check_choices(args)
    check_root_keys(args)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=args)
    selected_stages(cfg)
    validate(cfg)
    return cfg


def model_overrides(model: str) -> list[str]:
    """``model`` as overrides: a config name of ``conf/model``, a local folder (``model=local``),
    or a Hub id such as ``org/name`` (``model=hub``)."""
    if (CONF_DIR / "model" / f"{model}.yaml").is_file():
        return [f"model={model}"]
    if os.path.isdir(model):
        return ["model=local", f"model.path={Path(model).resolve()}"]
    return ["model=hub", f"model.hub_id={model}"]


class Lab:
    """One loaded model with its tokenizer and arch spec (a run's context), and the measurements a
    notebook wants. ``lab.model`` and ``lab.tokenizer`` are the transformers objects."""

    def __init__(self, ctx: Any):
        self.ctx, self.model, self.tokenizer = ctx, ctx.model, ctx.tokenizer

    def __repr__(self) -> str:
        from pipeline.models.arch import num_layers

        return f"Lab({self.ctx.model_name}: {num_layers(self.model)} layers on {self.ctx.device})"

    def ids(self, prompt: str):
        """(1, T) token ids of ``prompt`` under the model's BOS rule."""
        return self.ctx.encode(prompt).to(self.ctx.device)

    def tokens(self, prompt: str) -> list[str]:
        """The text of every hidden-state position of ``prompt`` (a sink token first, if any)."""
        from pipeline.hooks.positions import position_tokens

        return position_tokens(self.model, self.tokenizer, self.ids(prompt)[0].tolist())

    def activations(self, prompt: str, layers: Sequence[int] | None = None) -> dict[int, Any]:
        """{layer: the decoder layer's output hidden state, (positions, width), float32 on the CPU}."""
        import torch

        from pipeline.hooks.forward import capture
        from pipeline.models.arch import layer, num_layers
        from pipeline.models.load import forward_without_logits

        wanted = range(num_layers(self.model)) if layers is None else layers
        got: dict[int, torch.Tensor] = {}
        with torch.no_grad(), capture({str(i): layer(self.model, i) for i in wanted},
                                      lambda n, h: got.__setitem__(int(n), h[0].float().cpu())):
            forward_without_logits(self.model, self.ids(prompt))
        return got

    def profile(self, prompt: str, abs_threshold: float | None = None, rel_threshold: float | None = None):
        """Paper A's layer profile of ``prompt`` as a DataFrame: per layer the top-1/2/3 and median
        |h|, where the top-1 sits, and how many activations pass the massive rule (the defaults of
        :class:`pipeline.config.shared.MassiveRule`)."""
        import pandas as pd

        from pipeline.analysis.profile import profile_layers
        from pipeline.config.shared import MassiveRule

        rule = MassiveRule()
        prof = profile_layers(self.ctx, self.ids(prompt).cpu(), batch_size=1, max_hits=64, quiet=True,
                              abs_threshold=rule.abs_threshold if abs_threshold is None else abs_threshold,
                              rel_threshold=rule.rel_threshold if rel_threshold is None else rel_threshold,
                              delimiters=[".", "\n"])
        return pd.DataFrame(prof.layer_rows())

    def super_weights(self, prompt: str | None = None, **detection: Any):
        """Paper B's detector on one prompt (default: the stage's), with the stage's settings
        (:class:`pipeline.config.shared.SuperWeightDetection`; keywords override them): the
        directory of every candidate with its verdict, as a DataFrame."""
        import pandas as pd

        from pipeline.analysis.super_weight import detect, detect_kwargs
        from pipeline.config.shared import SuperWeightDetection

        args = SuperWeightDetection(**{**asdict(SuperWeightDetection()), **detection})
        found = detect(self.model, self.ids(prompt or args.detect_prompt), **detect_kwargs(args))
        rows = ([{**f, "verdict": "super weight"} for f in found.found] + [{**f, "verdict": "rebuilt"}
                for f in found.rebuilt] + [{**f, "verdict": "decoy"} for f in found.decoys])
        return pd.DataFrame(rows)

    @contextlib.contextmanager
    def set_activation(self, *, layer: int, dims: Sequence[int], positions: Sequence[int] | None = None,
                       value: float = 0.0) -> Iterator[None]:
        """Inside the block, decoder layer ``layer``'s output has ``value`` at ``dims`` of
        ``positions`` (all positions if None): paper A's intervention, reversibly."""
        from pipeline.hooks.forward import patch
        from pipeline.models.arch import layer as layer_at

        def edit(_name, h):
            h = h.clone()
            rows = slice(None) if positions is None else list(positions)
            for d in dims:
                h[:, rows, d] = value
            return h

        with patch({str(layer): layer_at(self.model, layer)}, edit):
            yield

    def loss(self, text: str) -> float:
        """Mean next-token cross-entropy of ``text`` (nats per token)."""
        import torch

        ids = self.ids(text)
        with torch.no_grad():
            return float(self.model(input_ids=ids, labels=ids).loss)


def load(model: str = "smollm2_135m", *overrides: str) -> Lab:
    """A :class:`Lab` on ``model`` (a config name, a local folder or a Hub id), loaded as a run of
    the pipeline would load it; ``overrides`` as on the command line (``"model.device=cpu"``)."""
    from omegaconf import OmegaConf

    from pipeline.context import build_context
    from pipeline.models.preflight import check_architecture

    cfg = compose(*model_overrides(model), *overrides)
    check_architecture(OmegaConf.to_container(cfg.model, resolve=True))  # before any weight loads
    return Lab(build_context(cfg))


def run(experiment: str, *overrides: str) -> dict[str, Any]:
    """Run one experiment as ``python -m pipeline experiment=<experiment> <overrides>`` does (its
    stages, results under ``outputs/results/``, figures if ``run.figures``); returns each stage's
    output (the summary's numbers and the paths of its tables)."""
    from pipeline.__main__ import run as run_config

    return run_config(compose(*overrides, experiment=experiment))
