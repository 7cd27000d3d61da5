"""Checks of a composed run config that need no model weights: each fails in one line, before
anything loads (a typo used to cost a minute of model loading and a screenful of traceback).

- ``run``: the seed is an integer; where results go (``context.results_root``).
- each selected stage's arguments: known names, the types of ``run``'s annotations, counts and
  sizes >= 1, no NaN, layer indices inside the model, sequence lengths inside its context.
  The model's depth and context are read from its config file alone (no weights), where one is
  at hand (tiny models, local folders, the GGUF cache, the Hub cache); otherwise the stage checks
  them itself once the model is loaded.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR

POSITIVE = {"n_sequences", "seq_len", "batch_size", "calib_sequences", "calib_seq_len", "ppl_seq_len",
            "ppl_windows", "eval_batch_size", "calib_windows", "n_prompts", "top_k", "max_hits", "max_iter",
            "bits", "calib_max_tokens", "zero_shot_limit"}
LENGTHS = {"seq_len", "calib_seq_len", "ppl_seq_len"}
LAYERS = {"layer", "fig1_layer", "layers", "decomp_layers"}


def _matches(value: Any, tp: Any) -> bool:
    """Does ``value`` (plain Python, from the config) fit the annotation ``tp``?"""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin in (dict, Mapping) or tp in (dict,):
        return isinstance(value, dict)
    return True


def _describe(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "").replace("collections.abc.", "")


def model_shape(model_cfg: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(decoder layers, context length) from the model's config file alone; None where unknown."""
    if model_cfg.get("source") == "tiny":
        return int(model_cfg.get("num_layers", 4)), 512
    found: dict[str, Any] | None = None
    if model_cfg.get("source") == "local" and (Path(str(model_cfg.get("path"))) / "config.json").exists():
        found = json.loads((Path(str(model_cfg["path"])) / "config.json").read_text())
    elif model_cfg.get("source") == "gguf":
        cached = sorted((CACHE_DIR / "models").glob(f"{model_cfg.get('name')}-*/config.json"))
        found = json.loads(cached[-1].read_text()) if cached else None
    elif model_cfg.get("source") == "hub":
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_cfg["hub_id"], revision=model_cfg.get("revision"),
                                                local_files_only=True)
            found = config.get_text_config().to_dict()
        except Exception:  # not cached: the stage checks once the model is loaded
            found = None
    if not found:
        return None, None
    found = found.get("text_config", found)
    layers = found.get("num_hidden_layers", found.get("n_layer"))
    context = found.get("max_position_embeddings", found.get("n_positions"))
    return (int(layers) if layers else None), (int(context) if context else None)


def _check_arg(where: str, name: str, value: Any, tp: Any, shape: tuple[int | None, int | None]) -> None:
    if not _matches(value, tp):
        raise PipelineError(f"{where}.{name}={value!r}: expected {_describe(tp)}")
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    numbers += [v for v in value if isinstance(v, (int, float))] if isinstance(value, (list, tuple)) else []
    if any(isinstance(v, float) and math.isnan(v) for v in numbers):
        raise PipelineError(f"{where}.{name}={value!r}: NaN is not a value (it would silently match nothing)")
    if name == "ppl_windows" and isinstance(value, str) and value not in ("all", "protocol"):
        raise PipelineError(f"{where}.{name}={value!r}: a number of windows, 'all' or 'protocol'")
    if name in POSITIVE and isinstance(value, int) and value < 1:
        raise PipelineError(f"{where}.{name}={value}: must be at least 1")
    n_layers, context = shape
    if name in LAYERS and n_layers is not None:
        indices = [v for v in (value if isinstance(value, (list, tuple)) else [value])
                   if isinstance(v, int) and not isinstance(v, bool)]
        for v in indices:
            if not 0 <= v < n_layers:
                raise PipelineError(f"{where}.{name}={value}: layer {v} is out of range: the model has "
                                    f"{n_layers} decoder layers (valid: 0..{n_layers - 1})")
    if name in LENGTHS and context is not None and isinstance(value, int) and value > context:
        raise PipelineError(f"{where}.{name}={value}: longer than the model's context ({context} tokens)")


def validate(cfg: DictConfig) -> None:
    """Every check above; raises PipelineError with one line."""
    from pipeline.context import results_root

    seed = cfg.run.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PipelineError(f"run.seed={seed!r}: expected an integer")
    results_root(cfg)
    from pipeline.data.text import BOS_MODES

    for where, rule in (("run.bos", cfg.run.get("bos")), ("data.bos", cfg.data.get("bos", "auto"))):
        if rule is not None and rule not in BOS_MODES:
            raise PipelineError(f"{where}={rule!r}: one of {', '.join(BOS_MODES)}"
                                + (" (or null: each dataset's own rule)" if where == "run.bos" else ""))
    for stage_name, key in (("ma_attention", "prompt_bos"), ("ma_profile", "fig1_bos")):
        rule = cfg.stage.get(stage_name, {}).get(key, "auto")
        if rule not in BOS_MODES:
            raise PipelineError(f"stage.{stage_name}.{key}={rule!r}: one of {', '.join(BOS_MODES)}")
    shape = model_shape(OmegaConf.to_container(cfg.model, resolve=True))
    for stage, stage_cfg in cfg.stage.items():
        if "_target_" not in stage_cfg:
            continue
        module, _, fn = str(stage_cfg._target_).rpartition(".")
        run = getattr(importlib.import_module(module), fn)
        params = inspect.signature(run).parameters
        hints = typing.get_type_hints(run)
        for name, value in OmegaConf.to_container(stage_cfg, resolve=True).items():
            if name.startswith("_"):
                continue
            if name not in params:
                known = ", ".join(p for p in params if p != "ctx")
                raise PipelineError(f"stage.{stage}.{name}: unknown argument; {stage} takes {known}")
            _check_arg(f"stage.{stage}", name, value, hints.get(name, Any), shape)
