"""Run loggers: CSV (the default; a no-op, since ResultsWriter always writes the CSVs) and W&B.

W&B is optional. Its mode comes from the logger config, else ``WANDB_MODE``, else ``online``
when an API key is available, else ``offline`` (said once on stderr). Secrets never reach W&B:
config keys that name a token, key, secret or password are dropped before ``wandb.init``.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from pipeline.core.errors import PipelineError

KINDS = ("csv", "wandb")
WANDB_MODES = ("online", "offline", "disabled", "shared")
OFFLINE_NOTICE = (
    "wandb: no API key found, logging offline to ./wandb (sync later with `wandb sync`)"
)
# A key naming a credential: one of these words as a part of it (hf_token, hf_token_value,
# WANDB_API_KEY, client_secret, auth, auth_header), or a key ending in "key" after api / access /
# secret / private / auth. Counts such as max_tokens / num_tokens / key_positions are kept, and so
# is a mapping entry named like a module path ("attention.attention.key", a DINOv2 rename).
_SECRET_KEY = re.compile(r"(^|[_\-.])(token|secret|secrets|password|passwd|credentials?|auth|authorization)"
                         r"([_\-.]|$)|(api|access|secret|private|auth)[_\-]?key$", re.I)
# Values that are secrets whatever their key: Hugging Face, OpenAI-style, GitHub, Slack and AWS
# tokens. (Not 40-hex strings: W&B keys look like that, but so do pinned git revisions, which must
# stay in the manifest.)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_\-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|"
                           r"github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16})")


def is_secret_key(key: object) -> bool:
    """Whether a config key names a credential (``hf_token``, ``api_key``, ``PASSWORD``)."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(key.strip("+~_-")))


def strip_secrets(obj: Any) -> Any:
    """A plain copy of ``obj`` (mappings, lists) without secret keys; token-like strings
    are replaced by ``"<redacted>"``."""
    if isinstance(obj, Mapping):
        return {k: strip_secrets(v) for k, v in obj.items() if not is_secret_key(k)}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        return [strip_secrets(v) for v in obj]
    if isinstance(obj, str) and _SECRET_VALUE.search(obj):
        return "<redacted>"
    return obj


def argv_has_secret(argv: Sequence[str]) -> bool:
    """Whether a command-line override such as ``+hub.hf_token=...`` carries a secret."""
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if (sep and is_secret_key(key.split(".")[-1])) or _SECRET_VALUE.search(arg):
            return True
    return False


def has_wandb_api_key(env: Mapping[str, str]) -> bool:
    """``WANDB_API_KEY`` set, or a netrc entry for the W&B host (what ``wandb login`` writes)."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    path = env.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(cfg_mode: str | None, env: Mapping[str, str],
                       reachable: Callable[[str], bool] | None = None) -> tuple[str, str | None]:
    """(mode, notice): config mode, else ``WANDB_MODE``, else online with an API key, else
    offline with a one-line notice to show the user."""
    if reachable is None:
        from pipeline.core.hub import url_reachable as reachable
    mode = cfg_mode or env.get("WANDB_MODE") or None
    notice = None
    if mode is None:
        mode = "online" if has_wandb_api_key(env) else "offline"
        notice = OFFLINE_NOTICE if mode == "offline" else None
        if mode == "online" and not reachable(env.get("WANDB_BASE_URL") or "https://api.wandb.ai"):
            # a key but no network: wandb.init would block for minutes before failing
            mode, notice = "offline", ("W&B: an API key is set but the server is unreachable: logging "
                                       "offline (wandb sync later)")
    if mode == "dryrun":  # wandb's old name for offline
        mode = "offline"
    if mode not in WANDB_MODES:
        raise PipelineError(f"unknown wandb mode {mode!r}; known: {', '.join(WANDB_MODES)}")
    return mode, notice


class Logger:
    """The CSV logger: CSVs are always written by ResultsWriter, so every method is a no-op."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log scalar metrics (no-op)."""

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        """Log a table (no-op)."""

    def finish(self) -> None:
        """Close the run (no-op)."""


class WandbLogger(Logger):
    """Logs to one W&B run; ``finish`` is idempotent."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._finished = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """``run.log(metrics, step=step)``."""
        self.run.log(dict(metrics), step=step)

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        """Log ``df`` as a ``wandb.Table`` under ``name``."""
        import wandb

        self.run.log({name: wandb.Table(dataframe=df)})

    def finish(self) -> None:
        """Finish the run (flushes the offline files)."""
        if not self._finished:
            self._finished = True
            self.run.finish()


def build_logger(cfg: Mapping, *, run_name: str, run_config: dict) -> Logger:
    """The logger named by ``cfg["kind"]`` (a ``conf/logger/*.yaml`` mapping)."""
    kind = cfg.get("kind", "csv")
    if kind == "csv":
        return Logger()
    if kind != "wandb":
        raise PipelineError(f"unknown logger kind {kind!r}; known: {', '.join(KINDS)}")
    try:
        import wandb
    except ImportError as err:
        raise PipelineError("wandb is not installed: pip install wandb, or use logger=csv") from err
    mode, notice = resolve_wandb_mode(cfg.get("mode"), os.environ)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    # wandb records sys.argv; a secret passed as an override must not travel with it.
    settings = wandb.Settings(x_disable_meta=True) if argv_has_secret(sys.argv) else None
    try:
        run = wandb.init(
            project=cfg.get("project"),
            entity=cfg.get("entity"),
            name=run_name,
            config=strip_secrets(run_config),
            mode=mode,
            tags=list(cfg.get("tags") or []),
            settings=settings,
        )
    except Exception as err:  # wandb raises many types (CommError, UsageError, ...)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PipelineError(
            f"wandb.init failed ({mode}): {reason}; try logger.mode=offline or logger=csv"
        ) from err
    return WandbLogger(run)
