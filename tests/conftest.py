"""Test-wide settings: offline, deterministic, no W&B, Triton in interpreter mode."""

import os

# Set before anything imports transformers / datasets / triton / wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import pipeline  # noqa: E402,F401  (registers the stage schemas that conf/stage/*.yaml extend)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
