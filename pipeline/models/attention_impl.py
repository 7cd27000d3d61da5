"""Switching a transformers model's attention implementation for a block, and back.

transformers 5 keeps the choice on every config object of a model (its own, sub-configs, and the
configs of submodels); a model built with one implementation and switched by the public
``set_attn_implementation`` may not switch nested configs the same way on every version, and no
public getter gives back the exact previous value. This module is the one place that reads and
writes the private ``_attn_implementation_internal`` attribute, so a transformers change that
moves it breaks here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config object of ``model``: its own, nested sub-configs, and submodels'."""
    found: dict[int, Any] = {}
    todo = [getattr(model, "config", None)]
    todo += [getattr(m, "config", None) for m in model.modules()]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation"):
            continue
        found[id(cfg)] = cfg
        todo += [getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {}]
    return list(found.values())


@contextmanager
def attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    """Run the body with attention implementation ``name`` ("eager", or one registered in
    ``transformers.AttentionInterface``) on every config of the model; on exit, also when the body
    raises, each config gets back exactly the value it had."""
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in _configs(model)]
    try:
        for cfg, _ in saved:
            cfg._attn_implementation_internal = name
        yield
    finally:
        for cfg, impl in saved:
            cfg._attn_implementation_internal = impl
