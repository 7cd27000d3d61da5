"""ResultsWriter: provenance, upsert by identity, atomic and concurrent writes, round trips."""

import errno
import json
import math
import multiprocessing as mp
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pipeline.core.results as results
from pipeline.core.errors import PipelineError
from pipeline.core.results import (
    IDENTITY_COLUMNS,
    PROVENANCE_COLUMNS,
    ResultsWriter,
    git_sha,
    versions,
)


def make_writer(root: Path, model: str = "tiny_llama", **kw) -> ResultsWriter:
    args = {"revision": None, "dataset": "austen", "seed": 0, "device": "cpu"} | kw
    return ResultsWriter(root, "a_fig1", model=model, **args)


def rows(n: int, tag: float = 0.0) -> list[dict]:
    return [{"layer": i, "value": tag + i} for i in range(n)]


def test_provenance_columns_first_and_filled(tmp_path):
    w = make_writer(tmp_path)
    path = w.write("acts", rows(3), stage="find_massive")
    assert path == tmp_path / "a_fig1" / "acts.csv"
    df = w.read("acts")
    assert tuple(df.columns[: len(PROVENANCE_COLUMNS)]) == PROVENANCE_COLUMNS
    assert list(df.columns[len(PROVENANCE_COLUMNS) :]) == ["layer", "value"]
    first = df.iloc[0]
    assert (first.experiment, first.stage, first.model) == ("a_fig1", "find_massive", "tiny_llama")
    assert (first.revision, first.condition, first.seed) == ("", "default", 0)
    assert first.torch == versions()["torch"] and first.git_sha == w.git_sha
    assert first.timestamp.endswith("+00:00")
    assert df["layer"].tolist() == [0, 1, 2]


def test_row_key_colliding_with_provenance_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        make_writer(tmp_path).write("t", [{"seed": 1}], stage="s")
    assert not (tmp_path / "a_fig1" / "t.csv").exists()


def test_upsert_replaces_own_rows_and_keeps_others_in_order(tmp_path):
    llama, gpt2 = make_writer(tmp_path), make_writer(tmp_path, model="tiny_gpt2")
    llama.write("t", rows(2, 0), stage="s", condition="baseline")
    llama.write("t", rows(2, 10), stage="s", condition="zero")
    gpt2.write("t", rows(2, 20), stage="s", condition="baseline")
    before = llama.read("t")
    llama.write("t", rows(2, 100), stage="s", condition="baseline")  # re-run
    df = llama.read("t")
    assert len(df) == 6
    others = df[~((df.model == "tiny_llama") & (df.condition == "baseline"))]
    kept = before.iloc[2:].reset_index(drop=True)
    assert others.reset_index(drop=True).equals(kept)  # untouched, same order
    mine = df[(df.model == "tiny_llama") & (df.condition == "baseline")]
    assert mine["value"].tolist() == [100.0, 101.0]


def test_rerun_with_fewer_rows_leaves_no_stale_rows(tmp_path):
    w = make_writer(tmp_path)
    w.write("t", rows(5), stage="s")
    w.write("t", rows(2, 50), stage="s")
    df = w.read("t")
    assert df["value"].tolist() == [50.0, 51.0]
    w.write("t", [], stage="s")  # an empty re-run deletes its rows
    assert len(w.read("t")) == 0


def test_identity_includes_stage_seed_revision_and_dataset(tmp_path):
    make_writer(tmp_path).write("t", rows(1), stage="s")
    make_writer(tmp_path, seed=1).write("t", rows(1), stage="s")
    make_writer(tmp_path, revision="abc").write("t", rows(1), stage="s")
    make_writer(tmp_path, dataset="c4").write("t", rows(1), stage="s")
    make_writer(tmp_path).write("t", rows(1), stage="other")
    make_writer(tmp_path).write("t", rows(1, 9), stage="s")  # replaces only the first
    df = make_writer(tmp_path).read("t")
    assert len(df) == 5 and not df.duplicated(list(IDENTITY_COLUMNS)).any()
    assert df.loc[df.revision == "abc", "revision"].tolist() == ["abc"]


def test_column_sets_may_differ_between_batches(tmp_path):
    w = make_writer(tmp_path)
    w.write("t", [{"a": 1, "b": 2}], stage="s", condition="x")
    w.write("t", [{"b": 3, "c": "hi"}, {"b": 4}], stage="s", condition="y")
    df = w.read("t")
    assert list(df.columns[len(PROVENANCE_COLUMNS) :]) == ["a", "b", "c"]
    assert math.isnan(df["a"].iloc[1]) and df["b"].tolist() == [2, 3, 4]


def test_inf_nan_and_tricky_values_round_trip(tmp_path):
    w = make_writer(tmp_path)
    w.write(
        "t",
        [
            {"x": math.inf, "y": math.nan, "s": "NA", "f": np.float32(0.5)},
            {"x": -math.inf, "y": 1e-300, "s": "None", "f": np.float64(0.1)},
        ],
        stage="s",
    )
    df = w.read("t")
    assert df["x"].tolist() == [math.inf, -math.inf]
    assert math.isnan(df["y"].iloc[0]) and df["y"].iloc[1] == 1e-300
    assert df["s"].tolist() == ["NA", "None"] and df["f"].tolist() == [0.5, 0.1]


def test_read_missing_table_is_empty(tmp_path):
    assert make_writer(tmp_path).read("nope").empty


def _fail_midway(df, fh):
    fh.write("experiment,stage\npartial")
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.suffix == ".tmp"]


def test_disk_full_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    w = make_writer(tmp_path)
    path = w.write("t", rows(3), stage="s")
    before = path.read_bytes()
    monkeypatch.setattr(results, "_write_csv", _fail_midway)
    with pytest.raises(PipelineError) as info:
        w.write("t", rows(1), stage="s", condition="other")
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message
    assert (
        message == f"could not write {path}: No space left on device (the previous file is intact)"
    )
    assert path.read_bytes() == before and _leftovers(path.parent) == []


def test_failed_replace_and_interrupt_keep_old_file(tmp_path, monkeypatch):
    w = make_writer(tmp_path)
    path = w.write("t", rows(3), stage="s")
    before = path.read_bytes()

    def no_replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(results.os, "replace", no_replace)
    with pytest.raises(PipelineError, match="Permission denied"):
        w.write("t", rows(1), stage="s")
    monkeypatch.undo()

    def interrupt(df, fh):
        fh.write("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "_write_csv", interrupt)
    with pytest.raises(KeyboardInterrupt):
        w.write("t", rows(1), stage="s")
    assert path.read_bytes() == before and _leftovers(path.parent) == []


def _concurrent_worker(root: str, condition: str) -> None:
    w = make_writer(Path(root))
    for attempt in range(5):
        w.write("shared", rows(3, attempt), stage="s", condition=condition)


def test_concurrent_writers_all_land(tmp_path):
    conditions = ["c0", "c1", "c2", "c3"]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path), c)) for c in conditions]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    df = make_writer(tmp_path).read("shared")
    assert sorted(df["condition"].unique()) == conditions
    assert len(df) == 4 * 3 and not df.duplicated(["condition", "layer"]).any()
    assert (df["value"] == df["layer"] + 4).all()  # every identity holds its last write
    assert _leftovers(tmp_path / "a_fig1") == []


def test_manifest_written_and_loadable(tmp_path):
    w = make_writer(tmp_path, model="meta-llama/Llama-2-7b-hf", seed=3)
    config = {"model": {"name": "x", "hf_token": "SECRET123"}, "data": {"max_tokens": 64}}
    path = w.write_manifest(config, extra={"stages": ["find_massive"]})
    assert (
        path == tmp_path / "a_fig1" / "manifests" / "meta-llama--Llama-2-7b-hf__austen__seed3.json"
    )
    manifest = json.loads(path.read_text())
    assert manifest["config"] == {"model": {"name": "x"}, "data": {"max_tokens": 64}}
    assert manifest["versions"] == versions() and manifest["git_sha"] == w.git_sha
    assert manifest["stages"] == ["find_massive"] and manifest["device"] == "cpu"
    assert {"timestamp", "python", "platform", "seed"} <= set(manifest)
    assert "SECRET123" not in path.read_text() and _leftovers(path.parent) == []
    with pytest.raises(ValueError, match="config"):
        w.write_manifest(config, extra={"config": 1})


def test_git_sha_clean_dirty_and_unknown(tmp_path):
    assert git_sha(tmp_path) == "unknown"

    def git(*args):
        ident = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run(["git", *ident, *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    sha = git_sha(tmp_path)
    assert sha != "unknown" and not sha.endswith("-dirty")
    (tmp_path / "f.txt").write_text("b")
    assert git_sha(tmp_path) == f"{sha}-dirty"


def test_bad_table_name_rejected(tmp_path):
    with pytest.raises(ValueError):
        make_writer(tmp_path).path("../escape")
