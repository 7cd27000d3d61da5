"""GGUF models split over several pip packages: joined once, checked, cached, or refused."""

from __future__ import annotations

import hashlib
import sys

import pytest

from pipeline.core.errors import PipelineError
from pipeline.models import gguf


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    """Three fake chunk packages on sys.path and a config naming them (as conf/model does)."""
    blobs = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 100, b"tail"]
    for k, blob in enumerate(blobs):
        pkg = tmp_path / "site" / f"fake_chunks_part{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{k:02d}").write_bytes(blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(gguf, "CACHE_DIR", tmp_path / "cache")
    for k in range(3):
        sys.modules.pop(f"fake_chunks_part{k}", None)
    cfg = {"name": "fake", "source": "gguf", "gguf_file": "m.gguf",
           "gguf_parts": [f"fake_chunks_part{k}/data/m.gguf.part{k:02d}" for k in range(3)],
           "sha256": hashlib.sha256(b"".join(blobs)).hexdigest()}
    return cfg, b"".join(blobs)


def test_chunks_are_joined_in_order_checked_and_cached(chunked):
    cfg, whole = chunked
    path = gguf.gguf_file(cfg)
    assert path.read_bytes() == whole and path.parent.name == "gguf"
    mtime = path.stat().st_mtime_ns
    assert gguf.gguf_file(cfg) == path and path.stat().st_mtime_ns == mtime  # cached, not re-joined


def test_a_wrong_checksum_is_refused_and_leaves_nothing(chunked):
    cfg, _ = chunked
    bad = {**cfg, "sha256": "0" * 64}
    with pytest.raises(PipelineError, match="sha256"):
        gguf.gguf_file(bad)
    assert not [p for p in (gguf.CACHE_DIR / "gguf").iterdir() if p.suffix != ".lock"]


def test_a_missing_chunk_or_checksum_is_one_line(chunked):
    cfg, _ = chunked
    with pytest.raises(PipelineError, match="chunk 'data/nope' not found in package 'fake_chunks_part1'"):
        gguf.gguf_file({**cfg, "gguf_parts": [cfg["gguf_parts"][0], "fake_chunks_part1/data/nope"]})
    with pytest.raises(PipelineError, match="not installed"):
        gguf.gguf_file({**cfg, "gguf_parts": ["no_such_chunk_pkg/x"]})
    with pytest.raises(PipelineError, match="needs the sha256"):
        gguf.gguf_file({k: v for k, v in cfg.items() if k != "sha256"})


def test_a_joined_size_mismatch_is_refused_in_one_line(chunked):
    """``size:`` (bytes of the joined file) is checked after joining, before the checksum."""
    cfg, whole = chunked
    with pytest.raises(PipelineError) as err:
        gguf.gguf_file({**cfg, "size": len(whole) + 1})
    msg = str(err.value)
    assert "\n" not in msg and f"{len(whole):,} bytes, expected {len(whole) + 1:,}" in msg
    assert not [p for p in (gguf.CACHE_DIR / "gguf").iterdir() if p.suffix != ".lock"]  # nothing left
    with pytest.raises(PipelineError, match="size='big'; the joined file's size in bytes"):
        gguf.gguf_file({**cfg, "size": "big"})
    assert gguf.gguf_file({**cfg, "size": len(whole)}).stat().st_size == len(whole)  # the right size passes
