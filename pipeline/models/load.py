"""Load a model and tokenizer from a ``conf/model/*.yaml`` mapping.

Sources:
  hub   -- a Hugging Face id (``hub_id``, ``revision``); used from the local cache when present,
           otherwise the Hub must be reachable (checked up front: one clear line, no retry loop).
  gguf  -- a GGUF file inside installed pip packages, one file or chunks (``models/gguf``);
           dequantised once into a safetensors cache so later loads take seconds.
  onnx  -- an ONNX graph inside a pip package, converted once into a transformers model
           (``models/onnx_import``; the embedded DINOv2-S ViT).
  local -- a directory saved with ``save_pretrained`` (``path``), or a folder inside an installed
           pip package (``package`` + ``path`` relative to it; found without importing it).
  tiny  -- a random 2-4 layer model built from a config (tests, ``debug``).
  init  -- a randomly initialised model to train: ``model_type`` + ``init`` (its config
           keywords, seeded by ``init_seed``; ``vocab_size`` defaults to the tokenizer's) and
           ``tokenizer: {bpe: vocab size, datasets: [...]}`` (a BPE trained in-process on the
           offline train splits), ``tokenizer: {hub_id: gpt2}`` (a published one) or
           ``tokenizer: {chars: shakespeare, bos: false}`` (paper C's characters).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.core.errors import PipelineError
from pipeline.core.hub import require_hub
from pipeline.models.gguf import converted_cache
from pipeline.validate import DTYPES, SOURCES, config_bool, local_path

_DTYPES = {name: getattr(torch, attr) for name, attr in DTYPES.items()}


def resolve_device(spec: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(spec).startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device '{spec}' requested but CUDA is not available (use device=auto or cpu)")
    return torch.device(spec)


def resolve_dtype(spec: str | None, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU (bf16 matmuls are slow and lossy on CPUs)."""
    if spec in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise PipelineError(f"unknown dtype '{spec}'; use auto or one of {sorted(_DTYPES)}")
    return _DTYPES[spec]


def _init_model(cfg: Mapping[str, Any], device: torch.device) -> tuple[torch.nn.Module, Any, torch.device]:
    """A fresh model of ``model_type`` (weights from its own initialiser, seeded) and its tokenizer."""
    from transformers import AutoConfig

    from pipeline.data.bpe import offline_bpe

    spec = dict(cfg.get("tokenizer") or {})
    if "hub_id" in spec:  # a published tokenizer (paper A: GPT-2's), from the local cache or the Hub
        path, extra = _hub_path({"name": f"{cfg['name']} tokenizer", "hub_id": spec["hub_id"],
                                 "revision": spec.get("revision")})
        tok = AutoTokenizer.from_pretrained(path, **extra)
    elif "chars" in spec:  # paper C: the characters of a corpus's statistics (+ a start token)
        from pipeline.data.bigram import char_tokenizer, shakespeare_stats

        if spec["chars"] != "shakespeare":
            raise PipelineError(f"model '{cfg['name']}': tokenizer.chars must be shakespeare, not {spec['chars']!r}")
        tok = char_tokenizer(shakespeare_stats().chars, bool(spec.get("bos", False)))
    elif "bpe" in spec:
        tok = offline_bpe(int(spec["bpe"]), list(spec.get("datasets", ["wiki_summaries", "shakespeare", "austen"])))
    else:
        raise PipelineError(f"model '{cfg['name']}' (source init) needs tokenizer: "
                            "{bpe: <vocab size>, datasets: [...]} or {hub_id: <tokenizer id>} or {chars: shakespeare}")
    init = dict(cfg.get("init") or {})
    init.setdefault("vocab_size", len(tok))  # paper A pads GPT-2's 50,257 to 50,304 (a multiple of 64)
    if int(init["vocab_size"]) < len(tok):
        raise PipelineError(f"model '{cfg['name']}': init.vocab_size={init['vocab_size']} is smaller than "
                            f"its tokenizer ({len(tok)} tokens)")
    try:
        config = AutoConfig.for_model(str(cfg["model_type"]), **init)
    except (KeyError, ValueError) as err:
        raise PipelineError(f"model '{cfg['name']}': cannot build model_type {cfg.get('model_type')!r}: {err}") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("init_seed", 0)))
        model = AutoModelForCausalLM.from_config(config)
    return model.to(device=device, dtype=resolve_dtype(cfg.get("dtype"), device)).eval(), tok, device


def _hub_path(cfg: Mapping[str, Any]) -> tuple[str, dict]:
    """The id to pass to from_pretrained, and kwargs (local_files_only when cached)."""
    from huggingface_hub import snapshot_download

    hub_id, revision = cfg["hub_id"], cfg.get("revision")
    try:
        path = snapshot_download(hub_id, revision=revision, local_files_only=True)
        return path, {}
    except Exception:  # not (completely) in the cache: the Hub must be reachable
        require_hub(f"model '{cfg['name']}' ({hub_id})")
        return hub_id, {"revision": revision}


def forward_without_logits(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """A forward pass for its hooks only: logits for the last position alone (the full
    vocabulary projection is a sizeable part of a small model's forward and nobody reads it).
    Whether the forward takes ``logits_to_keep`` is read off its signature: an error raised inside
    the forward (a hook's TypeError included) propagates, it never causes a second pass."""
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    model(input_ids=ids, use_cache=False, **extra)


def encoder_kind(path: str, extra: Mapping[str, Any]) -> str | None:
    """``"image"`` (a vision encoder: AutoModel and an image processor), ``"text"`` (a text encoder
    such as BERT: AutoModel and its tokenizer) or None (a causal LM), as its arch spec says."""
    from transformers import AutoConfig

    from pipeline.models.arch import ARCH_SPECS

    spec = ARCH_SPECS.get(AutoConfig.from_pretrained(path, **extra).model_type)
    return None if spec is None else "image" if spec.image_encoder else "text" if spec.text_encoder else None


def cls_as_bos(tok: Any) -> None:
    """A BERT tokenizer starts every text with [CLS] but names no BOS token: name [CLS] so, so that
    the BOS rules (``bos=auto`` -> every window and prompt starts with it) feed the encoder text
    that starts as in its training. Nothing changes for a tokenizer with a BOS or without a [CLS]."""
    cls = getattr(tok, "cls_token", None)
    if getattr(tok, "bos_token", None) is None and cls is not None:
        ids = tok("a", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == tok.cls_token_id:
            tok.bos_token = cls


def load_model(cfg: Mapping[str, Any]) -> tuple[torch.nn.Module, Any, torch.device]:
    """Return (model in eval mode, tokenizer, input device) for a model config mapping."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise PipelineError(f"model '{cfg.get('name')}': unknown source '{source}'; known: {', '.join(SOURCES)}")
    device = resolve_device(cfg.get("device", "auto"))
    if source == "tiny":
        from pipeline.models.tiny import tiny_model

        model, tok = tiny_model(cfg)
        return model.to(device=device, dtype=resolve_dtype(cfg.get("dtype"), device)), tok, device

    if source == "init":
        return _init_model(cfg, device)

    dtype = resolve_dtype(cfg.get("dtype"), device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config_bool(cfg, "trust_remote_code")}
    if cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = cfg["attn_implementation"]
    if source == "gguf":
        path, extra = str(converted_cache(cfg)), {}
    elif source == "onnx":
        from pipeline.models.onnx_import import converted_onnx

        path, extra = str(converted_onnx(cfg)), {}
    elif source == "local":
        path, extra = str(local_path(cfg)), {}
        if not Path(path).exists():
            raise PipelineError(f"model '{cfg['name']}': local path '{path}' does not exist")
    else:
        path, extra = _hub_path(cfg)
    device_map = cfg.get("device_map")
    if device_map:
        kwargs["device_map"] = device_map
    print(f"[models] loading {cfg['name']} ({dtype}, {device_map or device}) ...", flush=True)
    kind = "image" if cfg.get("auto_class") else encoder_kind(path, extra)
    if kind == "image":  # an image encoder: its image processor stands where a tokenizer would
        import transformers

        tok = transformers.AutoImageProcessor.from_pretrained(path, **extra)
        # auto_class: the encoder inside a two-tower checkpoint (CLIP: CLIPVisionModel)
        model = getattr(transformers, cfg.get("auto_class") or "AutoModel").from_pretrained(path, **kwargs, **extra)
    else:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"], **extra)
        if kind == "text":  # a text encoder (BERT): no LM head to load
            from transformers import AutoModel

            cls_as_bos(tok)
            model = AutoModel.from_pretrained(path, **kwargs, **extra)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **extra)
    if not device_map:
        model = model.to(device)
    else:
        device = next(model.parameters()).device  # inputs go where the embeddings live
    return model.eval(), tok, device
