"""Loggers: csv no-op, W&B offline end to end, mode resolution, secret stripping."""

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.loggers import (
    OFFLINE_NOTICE,
    Logger,
    WandbLogger,
    argv_has_secret,
    build_logger,
    resolve_wandb_mode,
    strip_secrets,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "logger"


def test_csv_logger_is_a_noop():
    cfg = OmegaConf.load(CONF / "csv.yaml")
    logger = build_logger(cfg, run_name="r", run_config={"a": 1})
    assert type(logger) is Logger
    logger.log_metrics({"ppl": 1.0}, step=0)
    logger.log_table("t", pd.DataFrame({"a": [1]}))
    logger.finish()


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(PipelineError, match="csv, wandb"):
        build_logger({"kind": "tensorboard"}, run_name="r", run_config={})


@pytest.mark.parametrize(
    ("cfg_mode", "env", "expected"),
    [
        ("disabled", {"WANDB_MODE": "online", "WANDB_API_KEY": "k"}, ("disabled", None)),
        (None, {"WANDB_MODE": "offline", "WANDB_API_KEY": "k"}, ("offline", None)),
        (None, {"WANDB_API_KEY": "k"}, ("online", None)),
        (None, {"NETRC": "/nonexistent/netrc"}, ("offline", OFFLINE_NOTICE)),
        (None, {"WANDB_MODE": "dryrun"}, ("offline", None)),
    ],
)
def test_resolve_wandb_mode(cfg_mode, env, expected):
    assert resolve_wandb_mode(cfg_mode, env, reachable=lambda url: True) == expected


def test_a_key_without_network_logs_offline_instead_of_blocking():
    """Defect: W&B went online whenever a key was set and blocked 102 s with no network."""
    seen = []
    mode, notice = resolve_wandb_mode(None, {"WANDB_API_KEY": "k"}, reachable=lambda url: seen.append(url) or False)
    assert mode == "offline" and "unreachable" in notice and "\n" not in notice
    assert seen == ["https://api.wandb.ai"]


def test_resolve_wandb_mode_reads_netrc_and_rejects_unknown(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode(None, {"NETRC": str(netrc)}, reachable=lambda url: True) == ("online", None)
    with pytest.raises(PipelineError, match="online, offline"):
        resolve_wandb_mode("sometimes", {})


def test_offline_notice_is_one_line():
    assert "\n" not in OFFLINE_NOTICE and "offline" in OFFLINE_NOTICE


def test_strip_secrets_is_recursive_and_keeps_counts():
    config = {
        "hf_token": "x",
        "WANDB_API_KEY": "y",
        "hub": {"password": "p", "Client_Secret": "s", "repo": "m", "revision": "a" * 40},
        "stages": [{"auth_token": "z", "max_tokens": 8}],
        "data": {"num_tokens": 64, "key_positions": [0, 1], "url": "hf_" + "A" * 30},
    }
    assert strip_secrets(config) == {
        "hub": {"repo": "m", "revision": "a" * 40},
        "stages": [{"max_tokens": 8}],
        "data": {"num_tokens": 64, "key_positions": [0, 1], "url": "<redacted>"},
    }


def test_argv_has_secret():
    assert argv_has_secret(["run.py", "+hub.hf_token=abc"])
    assert not argv_has_secret(["run.py", "model=gpt2", "data.max_tokens=8"])


def test_wandb_offline_run_never_stores_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.load(CONF / "wandb.yaml")
    cfg.mode = "offline"
    cfg.tags = ["test"]
    run_config = {"model": {"name": "tiny", "hf_token": "SECRET123"}, "seed": 0}
    logger = build_logger(cfg, run_name="test-run", run_config=run_config)
    try:
        assert isinstance(logger, WandbLogger)
        assert logger.run.settings.mode == "offline"
        assert dict(logger.run.config) == {"model": {"name": "tiny"}, "seed": 0}
        logger.log_metrics({"ppl": 12.5}, step=0)
        logger.log_table("acts", pd.DataFrame({"layer": [0, 1], "value": [1.0, float("inf")]}))
    finally:
        logger.finish()
    logger.finish()  # idempotent
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    assert any("table" in p.name for p in written)
    assert not [p for p in written if b"SECRET123" in p.read_bytes()]
    assert "SECRET123" not in capsys.readouterr().err


def test_secrets_are_recognised_by_key_anywhere_and_by_value_shape():
    """Issue N15: hf_token_value, auth, a short or a foreign token reached the manifest; and the
    old rule (a key ending in "key") dropped DINOv2's 'attention.attention.key' rename from it."""
    from pipeline.core.loggers import argv_has_secret, strip_secrets

    cfg = {"hf_token_value": "x", "auth": "y", "model": {"onnx_renames": {"attention.attention.key": "k_proj"}},
           "note": "hf_short1234", "other": "sk-proj-abcdefghijklmnop", "gh": "ghp_" + "a" * 36,
           "revision": "7581c9a0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6", "max_tokens": 5}
    clean = strip_secrets(cfg)
    assert "hf_token_value" not in clean and "auth" not in clean
    assert clean["model"]["onnx_renames"] == {"attention.attention.key": "k_proj"}
    assert clean["note"] == clean["other"] == clean["gh"] == "<redacted>"
    assert clean["revision"] == cfg["revision"] and clean["max_tokens"] == 5  # a git sha, a count: kept
    assert argv_has_secret(["+hub.auth=abc"]) and argv_has_secret(["x=sk-abcdefghijklmnopqrst"])
