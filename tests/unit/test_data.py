"""pipeline.data.text: offline text sources, split rules, token windows (fast, no network)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.core.errors import PipelineError
from pipeline.data import text as data
from pipeline.data.text import build_source, token_windows

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
SAMPLE = "The quick brown fox jumps over the lazy dog. Summer is warm. Winter is cold. " * 40


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE trained in-process (vocab ~300) with a <bos> token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([SAMPLE, "Elizabeth Darcy\n\nNAME:\nline"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>")


def text_source(text: str = SAMPLE, n_docs: int = 3) -> data.TextSource:
    return data.TextSource("t", lambda: [f"doc {i}: {text}" for i in range(n_docs)])


def test_window_shapes_and_sequential_slices(tok):
    src = text_source()
    stream = tok("\n\n".join(src.documents()), add_special_tokens=False)["input_ids"]
    w = token_windows(tok, src, seq_len=32, n_windows=5)
    assert w.shape == (5, 32) and w.dtype == torch.long
    assert w.flatten().tolist() == stream[: 5 * 32]


def test_incremental_tokenization_matches_whole_text(tok):
    src = text_source(n_docs=40)  # budget doubling has to kick in several times
    stream = tok(" ".join(src.documents()), add_special_tokens=False)["input_ids"]
    assert data.stream_tokens(tok, src, 3000, " ") == stream[:3000]
    assert data.stream_tokens(tok, src, 10**9, " ") == stream  # whole corpus


def test_bos_modes(tok):
    src, bos = text_source(), tok.bos_token_id
    never = token_windows(tok, src, seq_len=16, n_windows=4, bos="never")
    first = token_windows(tok, src, seq_len=16, n_windows=4, bos="first")
    every = token_windows(tok, src, seq_len=16, n_windows=4, bos="every")
    assert (never != bos).all()
    assert first[0, 0] == bos and (first.flatten()[1:] != bos).all()
    assert first.flatten()[1:].tolist() == never.flatten()[:-1].tolist()
    assert (every[:, 0] == bos).all() and (every[:, 1:] != bos).all()
    assert every[:, 1:].flatten().tolist() == never.flatten()[: 4 * 15].tolist()


def test_bos_without_bos_token_is_an_error(tok):
    class NoBos:
        bos_token_id = None

    with pytest.raises(PipelineError, match="no BOS"):
        token_windows(NoBos(), text_source(), seq_len=8, n_windows=1, bos="first")


def test_random_sampling_deterministic_and_non_overlapping(tok):
    numbers = [" ".join(str(i) for i in range(j, j + 100)) for j in range(0, 1000, 100)]
    src = data.TextSource("numbers", lambda: numbers)  # no repeated stretch: windows are unique
    stream = tok("\n\n".join(src.documents()), add_special_tokens=False)["input_ids"]
    a = token_windows(tok, src, seq_len=24, n_windows=6, sampling="random", seed=3)
    b = token_windows(tok, src, seq_len=24, n_windows=6, sampling="random", seed=3)
    c = token_windows(tok, src, seq_len=24, n_windows=6, sampling="random", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # locate each window in the stream: all distinct, non-overlapping, within the 4x pool
    starts = []
    for row in a.tolist():
        hits = [s for s in range(len(stream) - 23) if stream[s:s + 24] == row]
        assert len(hits) == 1
        starts.append(hits[0])
    starts.sort()
    assert all(y - x >= 24 for x, y in zip(starts, starts[1:], strict=False))
    assert starts[-1] + 24 <= 4 * 6 * 24


def test_not_enough_text(tok):
    src = data.TextSource("tiny", lambda: ["only a few words"])
    with pytest.raises(PipelineError, match=r"tiny' has only \d+ tokens .* need 640"):
        token_windows(tok, src, seq_len=64, n_windows=10)


def test_bad_arguments(tok):
    with pytest.raises(PipelineError, match="bos must be"):
        token_windows(tok, text_source(), seq_len=8, n_windows=1, bos="sometimes")


def test_unknown_kind_lists_known():
    with pytest.raises(PipelineError, match="known kinds: .*wiki_summaries.*hub"):
        build_source({"name": "x", "kind": "nope"})


def test_text_kind(tmp_path, tok):
    assert list(build_source({"kind": "text", "text": "hello"}).documents()) == ["hello"]
    (tmp_path / "f.txt").write_text("from a file")
    src = build_source({"name": "mine", "kind": "text", "path": str(tmp_path / "f.txt")})
    assert src.name == "mine" and list(src.documents()) == ["from a file"]
    with pytest.raises(PipelineError, match="kind text"):
        build_source({"kind": "text", "path": str(tmp_path / "missing.txt")})


def test_split_rule():
    names = [f"n{i:02d}" for i in range(25)]
    assert data.split_names(reversed(names), "eval") == names[-2:]
    assert data.split_names(names, "train") == names[:-2]
    assert data.split_names(["b", "a"], "eval") == ["b"]
    with pytest.raises(PipelineError, match="unknown split"):
        data.split_names(names, "test")


def test_wiki_splits_disjoint_and_deterministic():
    ev = list(build_source({"kind": "wiki_summaries", "split": "eval"}).documents())
    tr = list(build_source({"kind": "wiki_summaries", "split": "train"}).documents())
    assert 900 < len(ev) < 1100 and len(tr) > 8 * len(ev)
    assert not set(ev) & set(tr)
    assert ev == list(build_source({"kind": "wiki_summaries", "split": "eval"}).documents())


def test_shakespeare_looks_like_tiny_shakespeare():
    plays = list(build_source({"kind": "shakespeare", "split": "eval"}).documents())
    assert len(plays) == 3
    text = plays[0]
    assert text.split("\n", 1)[0].endswith(":")
    for marker in ("**", "_", "#", "\\", "["):
        assert marker not in text
    block = text.split("\n\n")[1]
    name, line = block.split("\n")[:2]
    assert name.endswith(":") and name[:-1].isupper() and line


def test_hub_offline_is_fast_pipeline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = yaml.safe_load((CONF / "c4.yaml").read_text())
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match="c4.*NeelNanda/c4-10k.*HF_HUB_OFFLINE") as err:
        next(build_source(cfg).documents())
    assert time.perf_counter() - t0 < 2.0
    assert "\n" not in str(err.value)


def test_all_configs_build_offline():
    """Every conf/data file names a known kind; offline ones build (the cache may be missing)."""
    files = sorted(CONF.glob("*.yaml"))
    assert {f.stem for f in files} >= {"wiki_summaries", "austen", "shakespeare", "wikitext2",
                                       "c4", "pg19", "redpajama"}
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        assert cfg["name"] == f.stem and cfg["kind"] in data.KINDS
        if cfg["kind"] != "austen" or (data.AUSTEN_DIR / "austen.txt").exists():
            assert build_source(cfg).name == f.stem


def test_austen(monkeypatch):
    """The corpus `make setup` prepared (from Debian's r-cran-janeaustenr). No test downloads:
    apt-get is made to fail here, so a missing cache fails in one line instead of fetching."""
    def no_network(cmd, *a, **k):
        raise AssertionError(f"a test tried to run {cmd[0]} (network); run `make assets` first")

    from pipeline.data import offline

    monkeypatch.setattr(offline.subprocess, "run", no_network)
    if not (data.AUSTEN_DIR / "austen.txt").exists():
        pytest.fail(f"Austen corpus missing in {data.AUSTEN_DIR}: run `make assets` (tests never download)")
    dest = data.prepare_austen()  # the cache exists: a no-op
    novels = {p.stem for p in dest.glob("*.txt")} - {"austen"}
    assert novels == set(data.AUSTEN_NOVELS) and len(novels) == 6
    pp = (dest / "prideprejudice.txt").read_text()
    assert data.AUSTEN_NOVELS["prideprejudice"] == "Pride and Prejudice" and "Elizabeth" in pp
    ev = list(build_source({"kind": "austen", "split": "eval"}).documents())
    assert len(ev) == 1 and ev[0].startswith("SENSE AND SENSIBILITY")
    mtime = (dest / "austen.txt").stat().st_mtime_ns
    assert data.prepare_austen(dest) == dest  # idempotent: a second call does nothing
    assert (dest / "austen.txt").stat().st_mtime_ns == mtime


def test_hub_doc_selection_follows_official_protocol(monkeypatch):
    """max_docs takes the first rows; shuffle_seed reproduces np.random.seed(s); choice(n, k)."""
    import datasets
    import numpy as np

    rows = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(2000)]})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or rows)
    c4 = yaml.safe_load((CONF / "c4.yaml").read_text()) | {"max_docs": 7}
    assert list(build_source(c4).documents()) == [f"row {i}" for i in range(7)]
    assert calls[-1] == (("NeelNanda/c4-10k", None), {"split": "train"})
    rp = yaml.safe_load((CONF / "redpajama.yaml").read_text())
    np.random.seed(rp["shuffle_seed"])
    expected = [f"row {i}" for i in np.random.choice(2000, 500, replace=False)]
    assert list(build_source(rp).documents()) == expected


def test_train_split_of_a_hub_dataset_is_its_training_split():
    from pipeline.core.errors import PipelineError
    from pipeline.data.text import data_config

    assert data_config("wikitext2")["hub_split"] == "test"
    assert data_config("wikitext2", split="train")["hub_split"] == "train"
    with pytest.raises(PipelineError, match="no training split"):
        data_config("c4", split="train")  # 10k documents, the first 5000 are the evaluation set


@pytest.mark.parametrize("seq_len,bos", [(32, "never"), (17, "first"), (16, "every")])
def test_all_windows_is_numel_floor_div_seq_len(tok, seq_len, bos):
    """The official WikiText-2 protocol: every whole window, numel // seqlen of them (the tail
    is dropped). Checked against the token count of the whole joined corpus."""
    src = text_source(n_docs=7)
    stream = tok("\n\n".join(src.documents()), add_special_tokens=False)["input_ids"]
    numel = len(stream) + (bos == "first")
    width = seq_len - (bos == "every")
    w = token_windows(tok, src, seq_len=seq_len, n_windows="all", bos=bos)
    assert w.shape == (numel // width, seq_len)
    body = w[:, 1:] if bos == "every" else w
    flat = body.flatten().tolist()
    assert flat[(bos == "first"):] == stream[: len(flat) - (bos == "first")]
    with pytest.raises(PipelineError, match="one window"):
        token_windows(tok, text_source("x", 1), seq_len=10_000, n_windows="all")


def test_protocol_windows_follow_each_dataset(tok):
    from pipeline.core.catalog import Catalog
    from pipeline.data.text import dataset_windows

    docs = {"kind": "text", "text": SAMPLE * 5, "bos": "never", "joiner": "\n\n"}
    catalog = Catalog({"data": {"a": {**docs, "name": "a", "eval_windows": 2}, "b": {**docs, "name": "b"}}})
    got = {n: dataset_windows(tok, n, seq_len=16, n_windows="protocol", catalog=catalog) for n in ("a", "b")}
    full = token_windows(tok, data.build_source(docs), seq_len=16, n_windows="all")
    assert got["a"].shape == (2, 16) and torch.equal(got["b"], full)


def test_an_image_folder_skips_and_counts_unreadable_files(tmp_path, capsys):
    """Issue N9: a non-image, a truncated JPEG or a zero-byte file aborted with a 28-33-line
    traceback; .JPG / .PNG files were skipped silently. Unreadable files are skipped and counted."""
    import numpy as np
    from PIL import Image

    from pipeline.data.images import ImageSource

    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    img.save(tmp_path / "a.JPG")
    img.save(tmp_path / "b.PNG")
    img.save(tmp_path / "full.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:40])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    got = [name for name, _ in ImageSource("f", {"source": "folder", "path": str(tmp_path)}).images()]
    assert got == ["a.JPG", "b.PNG", "full.jpg"]
    out = capsys.readouterr().out
    assert "skipped 3 unreadable file(s)" in out and "truncated.jpg" in out
