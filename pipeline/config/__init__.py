"""Typed stage arguments, declared once: every stage's arguments are a dataclass here (its
defaults are the only defaults), registered as the Hydra schema that ``conf/stage/<name>.yaml``
extends. A YAML file keeps only the values that differ from the schema; an unknown key or a value
of the wrong type is refused by the config system while composing, before any model loads.

This package imports no torch: the CLI checks a config with it before the heavy imports.

- :mod:`pipeline.config.shared`: the ideas several stages share (paper A's massive-activation
  rule, the evaluation protocol of the condition stages, paper B's super-weight detection).
- :mod:`pipeline.config.training`: :class:`TrainConfig`, the one training config.
- one module per paper for the stages' own arguments.

A stage's module names its arguments class: ``run(ctx, args: <Stage>Args)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from typing import Any

from pipeline.core.errors import PipelineError

STAGE_ARGS: dict[str, type] = {}
# Counts and sizes that must be at least 1, and knobs that must not be negative, wherever they occur.
AT_LEAST_ONE = {"n_sequences", "seq_len", "batch_size", "calib_sequences", "calib_seq_len", "ppl_seq_len",
                "ppl_windows", "eval_batch_size", "calib_windows", "n_prompts", "top_k", "max_hits", "max_iter",
                "bits", "calib_max_tokens", "zero_shot_limit", "steps", "micro_batch", "grad_accum", "block_size",
                "eval_every", "ckpt_every", "eval_batches", "profile_sequences", "k", "test_sequences", "n_images",
                "n_inputs", "eval_images", "calib_images", "calib_views", "attention_positions", "decay_steps",
                "max_weights"}
NOT_NEGATIVE = {"warmup_steps", "grad_clip", "weight_decay", "momentum", "probe_images", "non_sw_min_per_matrix",
                "non_sw_fraction", "landscape_patches"}


def stage_args(name: str):
    """Class decorator: ``name``'s typed arguments (a second class for one stage is an error)."""
    def register(cls: type) -> type:
        if name in STAGE_ARGS and STAGE_ARGS[name] is not cls:
            raise ValueError(f"stage '{name}' has two argument classes")
        STAGE_ARGS[name] = cls
        return cls
    return register


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def model_name(where: str) -> str:
    """A plain name for a model given by Hub id or folder (``conf/model/hub.yaml``, ``local.yaml``):
    a Hub id's "/" becomes "--" (Qwen/Qwen2.5-0.5B -> Qwen--Qwen2.5-0.5B), a folder gives its name."""
    import re
    from pathlib import PurePath

    text = str(where).rstrip("/")
    text = text.replace("/", "--") if text.count("/") == 1 and not text.startswith((".", "~")) else PurePath(text).name
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).lstrip("._-") or "model"


def register_schemas() -> None:
    """Store every stage's schema in Hydra's ConfigStore as ``schema/stage/<name>`` (what each
    ``conf/stage/<name>.yaml`` lists first in its defaults) and the shared root nodes."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    _import_all()
    if not OmegaConf.has_resolver("model_name"):
        OmegaConf.register_new_resolver("model_name", model_name)
    store = ConfigStore.instance()
    for name, cls in STAGE_ARGS.items():
        node = OmegaConf.structured(cls)
        OmegaConf.set_readonly(node, False)  # frozen dataclasses: the YAML and overrides still merge
        store.store(group="schema/stage", name=name, node=node)


def check_values(where: str, args: Any) -> None:
    """Ranges no type expresses: counts >= 1, knobs >= 0, no NaN, a positive learning rate."""
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        numbers = value if isinstance(value, list) else [value]
        numbers = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if any(isinstance(v, float) and math.isnan(v) for v in numbers):
            raise PipelineError(f"{where}.{f.name}={value!r}: NaN is not a value (it would silently match nothing)")
        if f.name in AT_LEAST_ONE and any(v < 1 for v in numbers):
            raise PipelineError(f"{where}.{f.name}={value}: must be at least 1")
        if f.name in NOT_NEGATIVE and any(v < 0 for v in numbers):
            raise PipelineError(f"{where}.{f.name}={value}: must not be negative")
        if isinstance(value, str) and "prompt" in f.name and not value.strip():
            raise PipelineError(f"{where}.{f.name}='': an empty prompt has no tokens to measure")
        if (f.name.endswith("_layer") or f.name == "layer") and isinstance(value, str) and value != "auto":
            raise PipelineError(f"{where}.{f.name}={value!r}: a 0-based layer index or 'auto'")
        if f.name in ("threshold", "in_threshold", "min_weight_z") and isinstance(value, str) and value != "auto":
            raise PipelineError(f"{where}.{f.name}={value!r}: a number or 'auto'")
    if getattr(args, "lr", 1.0) <= 0:
        raise PipelineError(f"{where}.lr={args.lr}: must be positive")
    if isinstance(getattr(args, "ppl_windows", None), str) and args.ppl_windows not in ("all", "protocol"):
        raise PipelineError(f"{where}.ppl_windows={args.ppl_windows!r}: a number of windows, 'all' or 'protocol'")


def typed_args(name: str, node: Any) -> Any:
    """The frozen, checked arguments of stage ``name`` from a mapping (a composed config node, or
    keyword overrides in a test or notebook: ``typed_args("ma_profile", {"n_sequences": 2})``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _import_all()
    if name not in STAGE_ARGS:
        raise PipelineError(f"unknown stage '{name}'; known: {', '.join(sorted(STAGE_ARGS))}")
    known = [f.name for f in dataclasses.fields(STAGE_ARGS[name])]
    unknown = sorted(set(node) - set(known))  # a "+stage.<name>.key=..." override gets past Hydra
    if unknown:
        raise PipelineError(f"stage.{name}.{unknown[0]}: unknown argument; {name} takes {', '.join(known)}")
    try:
        args = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(STAGE_ARGS[name]), node))
    except OmegaConfBaseException as err:
        first = str(err).splitlines()[0]
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        first = f"{key}: {first}" if key and f"'{key}'" not in first else first
        hint = f"; {name} takes {', '.join(known)}" if "Key" in first and "not in" in first else ""
        raise PipelineError(f"stage.{name}: {first}{hint}") from None
    check_values(f"stage.{name}", args)
    return args


def selected_stages(cfg: Any) -> dict[str, Any]:
    """{name: typed arguments} of the stages a composed run config selected, in order. A selected
    stage's node is typed by its schema; entries a ``debug`` file adds for stages the experiment
    did not select are plain mappings, and are skipped."""
    from omegaconf import OmegaConf

    return {name: typed_args(name, node) for name, node in cfg.stage.items()
            if dataclasses.is_dataclass(OmegaConf.get_type(node))}


_import_all()
