"""The stage registry: name -> run, one-screen summary, tables written, paper artefact.

Each module in ``pipeline/stages/`` registers itself once, at import, with :func:`register_stage`
(:func:`get_stage` imports the module of the stage a run selects; ``import pipeline.stages`` imports all);
the registry itself imports no stage. The CLI prints summaries through it, ``make figures`` and
the figure registry (``pipeline.figures``) name the tables each stage writes through it. A stage
never imports another stage: what two stages share lives in ``analysis/``, ``hooks/`` or
``evaluation/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``run(ctx, **kwargs) -> dict``, ``summary(output) -> str``, the tables it
    writes (``results/<experiment>/<table>.csv``) and the paper artefact it reproduces."""

    name: str
    run: Callable[..., dict[str, Any]]
    summary: Callable[[dict[str, Any]], str]
    tables: tuple[str, ...]
    artefact: str


STAGES: dict[str, StageSpec] = {}


def register_stage(spec: StageSpec) -> StageSpec:
    """Add ``spec`` to the registry (a second stage of the same name is a programming error)."""
    if spec.name in STAGES and STAGES[spec.name].run is not spec.run:
        raise ValueError(f"stage '{spec.name}' is registered twice")
    STAGES[spec.name] = spec
    return spec


def get_stage(name: str) -> StageSpec:
    """The registered stage ``name``; one line naming the known ones otherwise. (A stage module
    registers itself when imported: ``import pipeline.stages`` imports them all.)"""
    if name not in STAGES:
        import importlib
        import importlib.util

        if importlib.util.find_spec(f"pipeline.stages.{name}") is not None:
            importlib.import_module(f"pipeline.stages.{name}")
    if name not in STAGES:
        raise PipelineError(f"unknown stage '{name}'; known: {', '.join(sorted(STAGES))}")
    return STAGES[name]
