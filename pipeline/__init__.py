"""Reproduction pipeline for Massive Activations / The Super Weight / Birth of a Transformer.

Importing the package registers every stage's typed arguments as Hydra schemas
(:mod:`pipeline.config`), so that any composition of ``conf/`` (the CLI, tests, a notebook)
checks stage arguments against them.
"""

from pipeline.config import register_schemas

register_schemas()
