"""Checks of a composed run config that need no model weights: each fails in one line, before
anything loads (a typo used to cost a minute of model loading and a screenful of traceback).

- ``run``: the seed is an integer; where results go (:func:`results_root`).

Nothing here imports torch or transformers (a hub model's depth is read from its cached config
file only when one is named): a config error costs the CLI seconds, not a model stack's import.
- each selected stage's arguments against the model's shape: layer indices inside the model,
  sequence lengths inside its context. (Names, types and ranges are the schemas' job:
  :mod:`pipeline.config`.)
  The model's depth and context are read from its config file alone (no weights), where one is
  at hand (tiny models, local folders, the GGUF cache, the Hub cache); otherwise the stage checks
  them itself once the model is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import selected_stages
from pipeline.config.shared import BOS_MODES
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR, REPO_ROOT

# model configs: where the weights come from, and the keys each source cannot do without
SOURCES = ("hub", "gguf", "onnx", "local", "tiny", "init")
NEEDS = {"hub": ("hub_id",), "local": ("path",), "onnx": ("onnx", "config"), "tiny": ("arch",),
         "init": ("model_type", "tokenizer")}
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # name -> torch attribute; "auto" picks per device
INTEGERS = ("num_layers", "hidden_size", "init_seed")
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

LENGTHS = {"seq_len", "calib_seq_len", "ppl_seq_len", "block_size"}
LAYERS = {"layer", "fig1_layer", "layers", "decomp_layers", "landscape_layer"}


def local_path(model: Mapping[str, Any]) -> Path:
    """The folder of a ``local`` model: ``path``, or with ``package`` that path inside the installed
    package (found without importing it; not installed -> one line naming ``install``)."""
    from pipeline.core.assets import package_dir

    if not model.get("package"):
        return Path(str(model["path"]))
    module = str(model["package"])
    return package_dir(module, str(model.get("pip") or module), str(model.get("install") or "make setup")) / str(
        model["path"])


def model_shape(model_cfg: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(decoder layers, context length) from the model's config file alone; None where unknown."""
    if model_cfg.get("source") == "tiny":
        return int(model_cfg.get("num_layers", 4)), 512
    found: dict[str, Any] | None = None
    if model_cfg.get("source") == "local" and (local_path(model_cfg) / "config.json").exists():
        found = json.loads((local_path(model_cfg) / "config.json").read_text())
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


def _check_shape(where: str, name: str, value: Any, shape: tuple[int | None, int | None]) -> None:
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


def results_root(cfg: DictConfig) -> Path:
    """Where this run writes. The committed record (``results/``) only with ``run.record=true``,
    and never for a debug run or a tiny random model; otherwise ``outputs/results/`` or the
    ``run.results_dir`` given. Decided from the config alone, before anything loads."""
    record = REPO_ROOT / "results"
    chosen = cfg.run.get("results_dir")
    if chosen is not None and not str(chosen).strip():
        raise PipelineError("run.results_dir='': an empty path would write into the current folder; "
                            "give a folder, or null for outputs/results/")
    if cfg.run.get("record"):
        if cfg.run.get("debug") or cfg.model.get("source") == "tiny":
            what = "a debug run" if cfg.run.get("debug") else f"the tiny random model '{cfg.model.name}'"
            raise PipelineError(f"run.record=true would write {what} into the committed record; "
                                "record only real runs (drop debug=... or pick a real model)")
        return Path(chosen) if chosen else record
    if chosen is None:
        return REPO_ROOT / "outputs" / "results"
    if Path(chosen).resolve() == record.resolve():
        raise PipelineError("run.results_dir points at the committed record (results/): "
                            "say so with run.record=true (make record EXP=...)")
    return Path(chosen)


@functools.cache
def model_keys() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """The keys a model config may have (every key of conf/model/*.yaml), and per model_type the
    keys its ``init`` block may have: a user's model YAML is checked against what the loaders read."""
    import yaml

    top: set[str] = set()
    init: dict[str, set[str]] = {}
    for f in (REPO_ROOT / "conf" / "model").glob("*.yaml"):
        cfg = yaml.safe_load(f.read_text()) or {}
        top |= set(cfg)
        if isinstance(cfg.get("init"), dict) and cfg.get("model_type"):
            init.setdefault(str(cfg["model_type"]), set()).update(cfg["init"])
    return frozenset(top), {k: frozenset(v) for k, v in init.items()}


def check_model_config(model: Mapping[str, Any]) -> None:
    """A misspelt key of a model config was ignored and another model built (4 layers for 2): an
    unknown key, or an unknown ``init`` key for its model_type, fails in one line with a suggestion."""
    import difflib

    from pipeline.core.loggers import is_secret_key

    top, init = model_keys()
    where = [("model", {k for k in set(model) - top if not is_secret_key(k)}, top)]  # a token: stripped, not a typo
    if isinstance(model.get("init"), Mapping) and str(model.get("model_type")) in init:
        known = init[str(model["model_type"])]
        where.append(("model.init", set(model["init"]) - known, known))
    for prefix, unknown, known in where:
        for key in sorted(unknown):
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(sorted(known))}"
            raise PipelineError(f"{prefix}.{key}: not a key of a model config{hint}")


DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
def config_bool(cfg: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A yes/no setting read strictly: ``bool("false")`` is True, so a quoted 'false' or 'no'
    used to turn trust_remote_code ON. Anything but a bool or a yes/no word is an error."""
    value = cfg.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise PipelineError(f"model '{cfg.get('name')}': {key}={value!r} is not a yes/no value (true or false)")


def check_model_fields(model: Mapping[str, Any]) -> None:
    """What each source needs, and the types of the keys every loader reads: one line naming the
    key, before anything loads (a missing ``hub_id`` or ``path`` was a KeyError traceback)."""
    name = model.get("name")
    if not name:
        raise PipelineError("model.name is missing: a model config names itself (name: my_model)")
    source = model.get("source")
    if source not in SOURCES:
        raise PipelineError(f"model '{name}': unknown source {source!r}; known: {', '.join(SOURCES)}")
    needs = NEEDS.get(source, ()) if source != "gguf" else (
        ("gguf_parts",) if model.get("gguf_parts") else ("package", "gguf_file"))
    for key in needs:
        if model.get(key) in (None, ""):
            raise PipelineError(f"model '{name}': source {source} needs {key}")
    if source == "local" and model.get("package"):  # a folder inside an installed package
        if Path(str(model["path"])).is_absolute() or ".." in Path(str(model["path"])).parts:
            raise PipelineError(f"model '{name}': path {model['path']} must be relative to package "
                                f"'{model['package']}' (the folder inside it holding config.json)")
    elif source == "local" and not (Path(str(model["path"])).is_dir() or not Path(str(model["path"])).exists()):
        raise PipelineError(f"model '{name}': path {model['path']} is a file; give the model's folder "
                            "(the one holding config.json)")
    for key in INTEGERS:
        value = model.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise PipelineError(f"model '{name}': {key}={value!r} is not an integer")
    dtype = model.get("dtype")
    if dtype not in (None, "auto", *DTYPES):
        raise PipelineError(f"model '{name}': dtype={dtype!r}; auto or one of {', '.join(DTYPES)}")
    config_bool(model, "trust_remote_code")
    if model.get("revision") is not None and not isinstance(model["revision"], str):
        raise PipelineError(f"model '{name}': revision={model['revision']!r}; a branch, tag or commit as text "
                            "(quote a numeric one), or null")
    if model.get("init") is not None and not isinstance(model["init"], Mapping):
        raise PipelineError(f"model '{name}': init must be a mapping of config keys, not {model['init']!r}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


def check_names(cfg: DictConfig) -> None:
    """Experiment, model, family and data names become folder and link names under results/ and
    outputs/: plain names only (``run.experiment=../../results/x`` wrote anywhere before)."""
    for where, value in (("run.experiment", cfg.run.get("experiment")), ("model.name", cfg.model.get("name")),
                         ("model.family", cfg.model.get("family")), ("data.name", cfg.data.get("name"))):
        if value is not None and not NAME.fullmatch(str(value)):
            raise PipelineError(f"{where}={value!r}: a plain name (letters, digits and _ . = + -), not a path")


def validate(cfg: DictConfig) -> None:
    """Every check above; raises PipelineError with one line."""
    for group in ("model", "data"):  # a ??? value the command line did not give (model=hub without hub_id)
        for key in sorted(k for k in cfg[group] if OmegaConf.is_missing(cfg[group], k)):
            raise PipelineError(f"{group}.{key} is required by {group} '{cfg[group].get('source', group)}' config: "
                                f"add {group}.{key}=... (e.g. model=hub model.hub_id=org/name)")
    check_names(cfg)
    check_model_config(OmegaConf.to_container(cfg.model, resolve=True))
    check_model_fields(OmegaConf.to_container(cfg.model, resolve=True))
    seed = cfg.run.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise PipelineError(f"run.seed={seed!r}: an integer from 0 to 2**32 - 1")
    device = str(cfg.model.get("device", "auto"))
    if not DEVICE.fullmatch(device):
        raise PipelineError(f"model.device={device!r}: auto, cpu, cuda, cuda:<n> or mps")
    results_root(cfg)
    for where, rule in (("run.bos", cfg.run.get("bos")), ("data.bos", cfg.data.get("bos", "auto"))):
        if rule is not None and rule not in BOS_MODES:
            raise PipelineError(f"{where}={rule!r}: one of {', '.join(BOS_MODES)}"
                                + (" (or null: each dataset's own rule)" if where == "run.bos" else ""))
    for stage_name, key in (("ma_attention", "prompt_bos"), ("ma_profile", "fig1_bos")):
        rule = cfg.stage.get(stage_name, {}).get(key, "auto")
        if rule not in BOS_MODES:
            raise PipelineError(f"stage.{stage_name}.{key}={rule!r}: one of {', '.join(BOS_MODES)}")
    shape = model_shape(OmegaConf.to_container(cfg.model, resolve=True))
    for stage, args in selected_stages(cfg).items():
        for f in dataclasses.fields(args):
            _check_shape(f"stage.{stage}", f.name, getattr(args, f.name), shape)
