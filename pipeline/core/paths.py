"""Where the checkout's folders are: the one place that knows the package's depth in the tree."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
CACHE_DIR = Path(os.environ.get("PIPELINE_CACHE") or REPO_ROOT / ".cache")
