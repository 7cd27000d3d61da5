"""Before any weight loads: a published model whose architecture has no arch spec fails in one line
(read off its ``config.json``: a local folder, or the Hugging Face cache / the Hub for a Hub id),
where it used to fail only after its weights had loaded (Bloom: 146 s). Called by the entry point
and the notebook API; models built here (init, tiny) and GGUF files (their architecture is read
when they are converted) are not checked here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError


def declared_model_type(model_cfg: Mapping[str, Any]) -> str | None:
    """``model_type`` of the model's ``config.json`` where it can be read without its weights."""
    source = model_cfg.get("source")
    found: Path | None = None
    if source == "local":
        from pipeline.validate import local_path

        found = local_path(model_cfg) / "config.json"
    elif source == "hub":
        try:
            from huggingface_hub import hf_hub_download

            found = Path(hf_hub_download(str(model_cfg["hub_id"]), "config.json", revision=model_cfg.get("revision")))
        except Exception:  # noqa: BLE001 - offline and not cached, gated, ...: the loader says why
            return None
    if found is None or not found.is_file():
        return None
    try:
        return json.loads(found.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def check_architecture(model_cfg: Mapping[str, Any]) -> None:
    """One line, before the weights, for an architecture the pipeline has no arch spec for."""
    model_type = declared_model_type(model_cfg)
    if model_type is None:
        return
    from pipeline.models.arch import ARCH_SPECS, known_model_types

    if model_type not in ARCH_SPECS:
        raise PipelineError(f"model '{model_cfg.get('name')}': its architecture '{model_type}' (config.json) has no "
                            f"arch spec, so no stage can address its layers; known: {', '.join(known_model_types())}. "
                            "Add an ArchSpec in pipeline/models/arch.py (README: How to add a model)")
