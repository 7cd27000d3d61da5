"""Text sources (offline packages or the Hub) and the fixed-length token windows cut from them.

Paper A (Massive Activations) measures activation statistics and perplexity on windows of
WikiText-2, C4, PG-19 and RedPajama; ``conf/data/*.yaml`` records the official repo's protocol.
Offline stand-ins come from pip/apt packages (see ``reference/offline_assets.md``).

Split rule, the same for every offline corpus: sort the documents by name (Python string order),
``eval`` = the last ``max(1, n // 10)``, ``train`` = the rest, ``all`` = everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config.shared import BOS_MODES
from pipeline.core.catalog import Catalog, default_catalog
from pipeline.core.errors import PipelineError
from pipeline.core.hub import offline_requested, require_hub
from pipeline.data.offline import (  # noqa: F401  (re-exported: the split rule and the Austen assets)
    AUSTEN_DIR,
    AUSTEN_NOVELS,
    SPLITS,
    austen_source,
    play_to_text,
    prepare_austen,
    shakespeare_source,
    split_names,
    wiki_source,
)

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with special tokens puts the BOS token first (Llama-2-style tokenizers: yes;
    SmolLM2, GPT-2: no), read off the tokenizer itself, not its name."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


def resolve_bos(tokenizer: Any, rule: str, what: str = "text") -> str:
    """The one BOS rule of every text a run tokenizes. ``auto`` follows the model's tokenizer:
    ``every`` (each window or prompt starts with BOS, as the model saw in training and as
    lm-eval feeds it) when it adds one, else ``never``. An explicit ``never`` on a tokenizer
    that adds a BOS is kept (paper protocols say so) but announced once: perplexity of such a
    model without its BOS can be several times higher (results/any_model/bos_perplexity/)."""
    if rule not in BOS_MODES:
        raise PipelineError(f"bos must be one of {BOS_MODES}; got bos={rule!r}")
    adds = tokenizer_adds_bos(tokenizer)
    if rule == "auto":
        return "every" if adds else "never"
    key = (what, str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__)))
    if rule == "never" and adds and key not in _WARNED:
        _WARNED.add(key)
        log.warning("warning: %s: bos=never drops the BOS token this model's tokenizer adds; set bos=auto "
                    "(or run.bos=auto) to follow the tokenizer", what)
    return rule


def encode_prompt(tokenizer: Any, prompt: str, rule: str = "auto") -> torch.LongTensor:
    """(1, T) ids of one prompt under a BOS rule (``first`` and ``every`` coincide here)."""
    bos = resolve_bos(tokenizer, rule, "prompt")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if bos != "never":
        if tokenizer.bos_token_id is None:
            raise PipelineError(f"bos={rule!r} but the tokenizer has no BOS token; use bos=never")
        ids = [tokenizer.bos_token_id, *ids]
    return torch.tensor([ids], dtype=torch.long)
SAMPLINGS = ("sequential", "random")


@dataclass(frozen=True)
class TextSource:
    """A named corpus; ``documents()`` yields its texts lazily in a fixed order.
    ``bos`` and ``joiner`` are the config's defaults for :func:`token_windows`."""

    name: str
    load: Callable[[], Iterable[str]]
    bos: str = "auto"
    joiner: str = "\n\n"

    def documents(self) -> Iterator[str]:
        yield from self.load()


def _hub_source(cfg: Mapping[str, Any]) -> Callable[[], Iterable[str]]:
    if not cfg.get("hub_id"):
        raise PipelineError(f"data '{cfg['name']}' has kind 'hub' but no hub_id")
    what = f"dataset '{cfg['name']}' ({cfg['hub_id']})"

    def load() -> Iterator[str]:
        import datasets  # slow import, only for hub sources

        if not offline_requested():
            require_hub(what)  # fail in seconds rather than after datasets' ~50 s of retries
        try:  # offline mode still reads the local HF cache (cluster nodes without network)
            ds = datasets.load_dataset(cfg["hub_id"], cfg.get("hub_config"),
                                       split=cfg.get("hub_split", "train"))
        except Exception as err:  # noqa: BLE001 - any failure becomes one line
            require_hub(what)  # raises the one-line offline message
            raise PipelineError(f"{what} failed to load: {err}".splitlines()[0]) from err
        n, max_docs = len(ds), cfg.get("max_docs")
        if cfg.get("shuffle_seed") is not None:  # = np.random.seed(s); np.random.choice(...)
            rng = np.random.RandomState(int(cfg["shuffle_seed"]))
            idx = rng.choice(n, min(max_docs or n, n), replace=False).tolist()
        else:
            idx = range(min(max_docs or n, n))
        field = cfg.get("text_field", "text")
        for i in idx:
            yield ds[int(i)][field]

    return load


def _text_source(cfg: Mapping[str, Any]) -> Callable[[], Iterable[str]]:
    if cfg.get("text") is not None:
        return lambda: [str(cfg["text"])]
    path = Path(str(cfg.get("path", "")))
    if not cfg.get("path") or not path.is_file():
        raise PipelineError(f"data '{cfg['name']}' (kind text) needs `text:` or an existing "
                            f"`path:` (got {cfg.get('path')!r})")
    return lambda: [path.read_text(encoding="utf-8")]


_OFFLINE = {"wiki_summaries": wiki_source, "shakespeare": shakespeare_source, "austen": austen_source}
KINDS = (*_OFFLINE, "hub", "text", "images")


def data_config(name: str, catalog: Catalog | None = None, **overrides: Any) -> dict[str, Any]:
    """Dataset ``name`` of the run's catalog (``catalog.data.<name>``, from ``conf/data/``) as a
    dict, plus overrides, for stages that read several datasets (e.g. perplexity on WikiText-2,
    C4 and PG-19); unknown names fail with the known list. ``split="train"`` on a Hub dataset
    selects its ``hub_train_split`` (calibration data)."""
    cfg = {**(catalog or default_catalog()).get("data", name), **overrides}
    if cfg.get("kind") == "hub" and overrides.get("split") == "train":
        # calibration must not read the evaluation split: Hub sets name their training split
        if not cfg.get("hub_train_split"):
            raise PipelineError(f"data '{name}' has no training split configured (hub_train_split in "
                                f"conf/data/{name}.yaml): calibrate on another dataset, e.g. wikitext2")
        cfg["hub_split"] = cfg["hub_train_split"]
    return cfg


def dataset_windows(tokenizer: Any, name: str, *, seq_len: int, n_windows: int | str,
                    catalog: Catalog | None = None, split: str | None = None,
                    bos: str | None = None) -> torch.LongTensor:
    """Token windows of catalog dataset ``name`` (its BOS rule and joiner), the one way stages
    cut calibration and evaluation text. ``split="train"`` for calibration (held-in text);
    ``n_windows="protocol"``: the dataset's own ``eval_windows`` (default all); ``bos``: the
    run's override of the dataset's rule (``run.bos``), None to keep it."""
    cfg = data_config(name, catalog, **({"split": split} if split else {}))
    n = cfg.get("eval_windows", "all") if n_windows == "protocol" else n_windows
    return token_windows(tokenizer, build_source(cfg), seq_len=seq_len, n_windows=n,
                         bos=bos or cfg.get("bos", "auto"), joiner=cfg.get("joiner", "\n\n"))


def build_source(cfg: Mapping[str, Any]) -> TextSource:
    """A TextSource from one ``conf/data/*.yaml`` mapping (dict or OmegaConf DictConfig)."""
    cfg = {str(k): cfg[k] for k in cfg}
    kind = cfg.get("kind")
    cfg.setdefault("name", kind)
    if kind in _OFFLINE:
        split_names([], cfg.get("split", "eval"))  # validate the split now, not at first use
        load = _OFFLINE[kind](cfg["name"], cfg.get("split", "eval"))
    elif kind == "hub":
        load = _hub_source(cfg)
    elif kind == "text":
        load = _text_source(cfg)
    elif kind == "images":  # an image set shares the data configs, not the text interface
        from pipeline.data.images import ImageSource

        return ImageSource(name=str(cfg["name"]), cfg=cfg)  # type: ignore[return-value]
    else:
        raise PipelineError(f"unknown data kind '{kind}'; known kinds: {', '.join(KINDS)}")
    return TextSource(name=str(cfg["name"]), load=load, bos=str(cfg.get("bos", "auto")),
                      joiner=str(cfg.get("joiner", "\n\n")))


_TAIL_MARGIN = 64  # tokens near a cut may merge with the text after it: never use them


def stream_tokens(tokenizer: Any, source: TextSource, n_tokens: int | None, joiner: str) -> list[int]:
    """The first ``n_tokens`` ids (fewer if the corpus is shorter; None: all of them) of
    ``joiner.join(documents)`` tokenized with ``add_special_tokens=False``, tokenizing only a
    prefix of the text (grown by doubling) and equal to tokenizing the whole joined text."""
    if n_tokens is None:
        return list(tokenizer(joiner.join(source.documents()), add_special_tokens=False)["input_ids"])
    docs, text, exhausted, budget = source.documents(), "", False, 6 * n_tokens + 1024
    while True:
        while len(text) < budget and not exhausted:
            doc = next(docs, None)
            exhausted = doc is None
            text += "" if doc is None else (joiner if text else "") + doc
        complete = exhausted and budget >= len(text)
        ids = tokenizer(text[:budget], add_special_tokens=False)["input_ids"]
        if complete or len(ids) >= n_tokens + _TAIL_MARGIN:
            return list(ids[:n_tokens])
        budget *= 2


def token_windows(tokenizer: Any, source: TextSource, *, seq_len: int, n_windows: int | str,
                  bos: str = "auto", sampling: str = "sequential", seed: int = 0,
                  joiner: str = "\n\n") -> torch.LongTensor:
    """``(n_windows, seq_len)`` int64 token windows cut from one stream of the source's documents.

    ``n_windows="all"``: every whole window of the stream, ``len(stream) // stream tokens per
    window`` of them (the official WikiText-2 perplexity protocol, ``numel // seqlen``).

    bos: "auto" follow the tokenizer (:func:`resolve_bos`); "never" no BOS; "first" one BOS at
    the very start of the stream (paper A's C4/PG-19 protocol); "every" each window = BOS +
    seq_len-1 stream tokens. sampling: "sequential" = the
    first n non-overlapping windows; "random" = n non-overlapping windows at random sorted offsets
    (``torch.Generator`` seeded with ``seed``) within the first ``4 * n * seq_len`` tokens.
    """
    if sampling not in SAMPLINGS:
        raise PipelineError(f"sampling must be one of {SAMPLINGS}; got sampling={sampling!r}")
    bos = resolve_bos(tokenizer, bos, f"data '{source.name}'")
    if n_windows == "all":
        if sampling != "sequential":
            raise PipelineError("n_windows='all' takes every window in order: use sampling=sequential")
        return _all_windows(tokenizer, source, seq_len=seq_len, bos=bos, joiner=joiner)
    if not isinstance(n_windows, int) or n_windows < 1 or seq_len < (2 if bos == "every" else 1):
        raise PipelineError(f"need n_windows >= 1 and seq_len >= 2 (got {n_windows}, {seq_len})")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos != "never" and bos_id is None:
        raise PipelineError(f"bos={bos!r} but the tokenizer has no BOS token; use bos=never")
    width = seq_len - (bos == "every")  # stream tokens per window
    need = n_windows * width
    pool_size = need if sampling == "sequential" else 4 * need
    stream = ([bos_id] if bos == "first" else []) + stream_tokens(
        tokenizer, source, pool_size - (bos == "first"), joiner)
    if len(stream) < need:
        raise PipelineError(f"data '{source.name}' has only {len(stream)} tokens but "
                            f"{n_windows} windows of {seq_len} need {need}; use a larger source "
                            "or fewer/shorter windows")
    if sampling == "sequential":
        starts = [i * width for i in range(n_windows)]
    else:  # sorted gaps from the slack + i*width: non-overlapping by construction
        gen = torch.Generator().manual_seed(seed)
        gaps = torch.randint(0, len(stream) - need + 1, (n_windows,), generator=gen).sort().values
        starts = [int(g) + i * width for i, g in enumerate(gaps)]
    ids = torch.tensor(stream, dtype=torch.long)
    windows = torch.stack([ids[s:s + width] for s in starts])
    if bos == "every":
        windows = torch.cat([torch.full((n_windows, 1), bos_id, dtype=torch.long), windows], 1)
    return windows


def _all_windows(tokenizer: Any, source: TextSource, *, seq_len: int, bos: str, joiner: str) -> torch.LongTensor:
    """Every whole non-overlapping window of the whole stream (the tail shorter than a window is
    dropped, as the official code's ``numel // seqlen``); ``bos`` already resolved."""
    if seq_len < (2 if bos == "every" else 1):
        raise PipelineError(f"need seq_len >= 2 (got {seq_len})")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos != "never" and bos_id is None:
        raise PipelineError(f"bos={bos!r} but the tokenizer has no BOS token; use bos=never")
    stream = ([bos_id] if bos == "first" else []) + stream_tokens(tokenizer, source, None, joiner)
    width = seq_len - (bos == "every")
    n = len(stream) // width
    if n < 1:
        raise PipelineError(f"data '{source.name}' has only {len(stream)} tokens: not one window of {seq_len}")
    windows = torch.tensor(stream[: n * width], dtype=torch.long).view(n, width)
    if bos == "every":
        windows = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), windows], 1)
    return windows
