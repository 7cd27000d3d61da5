"""ResultsWriter and the shard store: provenance, settings, atomic commits, concurrent jobs, corrupt tables."""

import errno
import json
import math
import multiprocessing as mp
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline.core.results as results
import pipeline.core.store as store
from pipeline.core.errors import PipelineError
from pipeline.core.provenance import git_sha, versions
from pipeline.core.results import PROVENANCE_COLUMNS, ResultsWriter, read_table
from tests.helpers import as_killed


def make_writer(root: Path, model: str = "tiny_llama", **kw) -> ResultsWriter:
    args = {"revision": None, "dataset": "austen", "seed": 0, "device": "cpu"} | kw
    return ResultsWriter(root, "a_fig1", model=model, **args)


def rows(n: int, tag: float = 0.0) -> list[dict]:
    return [{"layer": i, "value": tag + i} for i in range(n)]


def test_provenance_columns_first_and_filled(tmp_path):
    w = make_writer(tmp_path)
    path = w.write("acts", rows(3), stage="find_massive")
    assert path == tmp_path / "a_fig1" / "acts.csv"  # the merged view, written at commit
    df = w.read("acts")
    assert tuple(df.columns[: len(PROVENANCE_COLUMNS)]) == PROVENANCE_COLUMNS
    assert list(df.columns[len(PROVENANCE_COLUMNS) :]) == ["layer", "value"]
    first = df.iloc[0]
    assert (first.experiment, first.stage, first.model) == ("a_fig1", "find_massive", "tiny_llama")
    assert (first.revision, first.condition, first.seed, first.setting) == ("", "default", 0, w.setting)
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
    gpt2.commit({})
    llama.write("t", rows(2, 100), stage="s", condition="baseline")  # the same condition again
    df = llama.read("t")
    assert len(df) == 6
    mine = df[(df.model == "tiny_llama") & (df.condition == "baseline")]
    assert mine["value"].tolist() == [100.0, 101.0]
    assert df.loc[df.model == "tiny_gpt2", "value"].tolist() == [20.0, 21.0]


def test_rerun_with_fewer_rows_leaves_no_stale_rows(tmp_path):
    w = make_writer(tmp_path)
    w.write("t", rows(5), stage="s")
    w.write("t", rows(2, 50), stage="s")
    df = w.read("t")
    assert df["value"].tolist() == [50.0, 51.0]
    w.write("t", [], stage="s")  # an empty re-run deletes its rows
    assert len(w.read("t")) == 0


def test_setting_is_part_of_the_identity_and_a_rerun_replaces_its_own_shard(tmp_path):
    """Defect: the identity omitted stage kwargs, dtype and split, so a sweep over seq_len kept
    one job's rows. Now each setting is its own shard; the same setting replaces its shard."""
    a = make_writer(tmp_path, setting={"seq_len": 2048})
    b = make_writer(tmp_path, setting={"seq_len": 4096})
    assert a.setting != b.setting and a.key != b.key
    for w, tag in ((a, 0), (b, 10)):
        w.write("t", rows(2, tag), stage="s")
        w.commit({})
    df = read_table(tmp_path / "a_fig1", "t")
    assert sorted(df["setting"].unique()) == sorted([a.setting, b.setting]) and len(df) == 4
    again = make_writer(tmp_path, setting={"seq_len": 2048})
    again.write("t", rows(1, 100), stage="s")
    again.commit({})
    df = read_table(tmp_path / "a_fig1", "t")
    assert len(df) == 3 and df.loc[df.setting == a.setting, "value"].tolist() == [100.0]
    view = (tmp_path / "a_fig1" / "t.csv").read_text()
    assert view.count("\n") == 4  # the merged view: header + 3 rows


def test_step_rows_are_their_own_identity(tmp_path):
    w = make_writer(tmp_path)
    for step in (0, 100, 200):
        w.write("curve", [{"loss": 5.0 - step / 100}], stage="train", step=step)
    w.write("curve", [{"loss": 9.0}], stage="train", step=100)  # a resumed run rewrites step 100
    df = w.read("curve")
    assert df["step"].tolist() == [0, 200, 100] and df.loc[df.step == 100, "loss"].tolist() == [9.0]


def test_identity_includes_stage_seed_revision_and_dataset(tmp_path):
    for kw, stage in (({}, "s"), ({"seed": 1}, "s"), ({"revision": "abc"}, "s"), ({"dataset": "c4"}, "s"),
                      ({"setting": {"stages": "other"}}, "other")):  # another stage: another setting
        w = make_writer(tmp_path, **kw)
        w.write("t", rows(1), stage=stage)
        w.commit({})
    w = make_writer(tmp_path)
    w.write("t", rows(1, 9), stage="s")  # replaces only the first
    w.commit({})
    df = read_table(tmp_path / "a_fig1", "t")
    assert len(df) == 5 and not df.duplicated(["stage", "model", "revision", "dataset", "seed", "setting"]).any()
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
    w.write("t", rows(3), stage="s")
    path = w.staging / "t.csv"
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
    w.write("t", rows(3), stage="s")
    path = w.staging / "t.csv"
    before = path.read_bytes()

    def no_replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store.os, "replace", no_replace)
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


def _concurrent_worker(root: str, job: int) -> None:
    """One cluster job: its own setting, several conditions, then a commit (a separate process
    stands in for a separate node: no lock is shared)."""
    w = make_writer(Path(root), setting={"job": job})
    for condition in ("c0", "c1", "c2"):
        for attempt in range(3):
            w.write("shared", rows(3, attempt), stage="s", condition=condition)
    w.commit({"job": job})


def test_sixteen_concurrent_jobs_lose_and_duplicate_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path), j)) for j in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 16
    df = read_table(tmp_path / "a_fig1", "shared")
    assert len(df) == 16 * 3 * 3 and df["setting"].nunique() == 16
    assert not df.duplicated(["setting", "condition", "layer"]).any()
    assert (df["value"] == df["layer"] + 2).all()  # every identity holds its last write
    assert len(list((tmp_path / "a_fig1" / "runs").glob("*/manifest.json"))) == 16
    assert not list((tmp_path / "a_fig1").rglob("*.tmp")) and not list((tmp_path / "a_fig1" / "runs").glob(".*"))


@pytest.mark.parametrize("corrupt", [
    lambda text: text[: text.rindex("\n", 0, len(text) - 1) + 5],          # a truncated last row
    lambda text: text.replace(",value\n", "\n", 1),                          # header one column short
    lambda text: text + "1,2,3\n",                                            # a short row
    lambda text: text.replace("\n", "\n\"", 2),                              # an open quote
])
def test_a_corrupt_table_is_refused_not_repaired(tmp_path, corrupt):
    w = make_writer(tmp_path)
    w.write("t", rows(3), stage="s")
    path = w.commit({}).parent / "t.csv"
    path.write_text(corrupt(path.read_text()))
    before = path.read_bytes()
    with pytest.raises(PipelineError, match=f"refusing corrupt table {path}"):
        read_table(tmp_path / "a_fig1", "t")
    with pytest.raises(PipelineError, match="refusing corrupt table"):  # a new run stops at its start (N13)
        make_writer(tmp_path, setting={"other": 1})
    assert path.read_bytes() == before  # refused, never rewritten


@pytest.mark.parametrize("corrupt,reason", [
    (lambda text: text.replace("experiment,stage,model", "exp,stage,model", 1), "no provenance column 'experiment'"),
    (lambda text: "x\n" + "\n".join("\x01\x02junk" for _ in range(3)) + "\n", "no provenance column"),
    (lambda text: text + text.splitlines(keepends=True)[0], "its header is repeated inside it"),
    (lambda text: text + text.splitlines(keepends=True)[-1], "a row is written twice"),
])
def test_tables_that_parse_but_are_not_shards_are_refused(tmp_path, corrupt, reason):
    """Issue N12: binary junk read as one column, renamed provenance columns, a header repeated
    mid-file and duplicated rows were merged silently."""
    w = make_writer(tmp_path)
    w.write("t", rows(3), stage="s")
    path = w.commit({}).parent / "t.csv"
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(PipelineError, match=reason):
        read_table(tmp_path / "a_fig1", "t")


def test_tables_and_manifest_become_visible_together(tmp_path, monkeypatch):
    """Defect: tables were written one at a time and the manifest last, so a signal in between
    left a new table beside an old one. A run commits in one rename; interrupted anywhere, the
    record holds the previous run whole."""
    old = make_writer(tmp_path)
    old.write("a", rows(2, 0), stage="s")
    old.write("b", rows(2, 0), stage="s")
    old.commit({"run": "old"})
    new = make_writer(tmp_path)
    new.write("a", rows(2, 50), stage="s")
    new.write("b", rows(2, 50), stage="s")
    assert read_table(tmp_path / "a_fig1", "a")["value"].tolist() == [0.0, 1.0]  # not committed yet
    calls = []
    real_replace = store.os.replace

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old run moved aside, the new one not yet in place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.commit({"run": "new"})
    monkeypatch.undo()
    for t in ("a", "b"):  # the old run was put back at once
        assert read_table(tmp_path / "a_fig1", t)["value"].tolist() == [0.0, 1.0]
    manifest = json.loads((tmp_path / "a_fig1" / "runs" / old.key / "manifest.json").read_text())
    assert manifest["config"] == {"run": "old"}
    as_killed(new)  # its process is gone
    resumed = make_writer(tmp_path)  # the killed run's rows are still staged: a re-run resumes
    assert resumed.resumed and resumed.done("a", "s", "default")
    resumed.commit({"run": "new"})
    assert read_table(tmp_path / "a_fig1", "b")["value"].tolist() == [50.0, 51.0]


def test_temp_files_of_killed_processes_are_cleaned(tmp_path):
    w = make_writer(tmp_path)
    w.write("t", rows(1), stage="s")
    w.commit({})
    dead = tmp_path / "a_fig1" / f".t.csv.{store._HOST}.999999999.abcd1234.tmp"
    alive = tmp_path / "a_fig1" / f".t.csv.{store._HOST}.{os.getpid()}.abcd1234.tmp"
    other_host = tmp_path / "a_fig1" / ".t.csv.elsewhere.999999999.abcd1234.tmp"
    for f in (dead, alive, other_host):
        f.write_text("x")
    make_writer(tmp_path)  # a new run cleans what killed runs of this host left
    assert not dead.exists() and alive.exists() and other_host.exists()


def test_manifest_written_and_loadable(tmp_path):
    w = make_writer(tmp_path, model="meta-llama/Llama-2-7b-hf", seed=3, setting={"x": 1})
    config = {"model": {"name": "x", "hf_token": "SECRET123"}, "data": {"max_tokens": 64}}
    path = w.commit(config, extra={"stages": ["find_massive"]})
    assert path == (tmp_path / "a_fig1" / "runs" / f"meta-llama--Llama-2-7b-hf__austen__seed3__{w.setting}"
                    / "manifest.json")
    manifest = json.loads(path.read_text())
    assert manifest["config"] == {"model": {"name": "x"}, "data": {"max_tokens": 64}}
    assert manifest["versions"] == versions() and manifest["git_sha"] == w.git_sha
    assert manifest["stages"] == ["find_massive"] and manifest["device"] == "cpu"
    assert manifest["setting"] == w.setting
    assert {"timestamp", "python", "platform", "seed"} <= set(manifest)
    assert "SECRET123" not in path.read_text() and _leftovers(path.parent) == []
    with pytest.raises(ValueError, match="config"):
        w.commit(config, extra={"config": 1})


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


def test_a_swap_killed_between_its_renames_is_undone_by_the_next_run(tmp_path):
    """SIGKILL after the old run was moved aside: the next run of that experiment restores it."""
    w = make_writer(tmp_path)
    w.write("t", rows(2), stage="s")
    final = w.commit({}).parent
    aside = final.with_name(f".old-{final.name}.{store._HOST}.999999999")  # a dead process's
    os.replace(final, aside)
    assert read_table(tmp_path / "a_fig1", "t").empty
    make_writer(tmp_path)
    assert read_table(tmp_path / "a_fig1", "t")["value"].tolist() == [0.0, 1.0] and not aside.exists()


def test_clean_stale_skips_a_run_folder_renamed_while_it_scans(tmp_path, monkeypatch):
    """Another job commits (renames its .partial folder) between our listing and our scan."""
    runs = tmp_path / "exp" / "runs"
    (runs / ".partial-other").mkdir(parents=True)
    (runs / "done").mkdir()
    real_scandir, real_listdir = os.scandir, os.listdir

    def committed_meanwhile(real):
        def call(path="."):
            if str(path).endswith(".partial-other") and os.path.isdir(path):
                os.replace(path, str(path)[: -len(".partial-other")] + "other")
            return real(path)
        return call

    monkeypatch.setattr(os, "scandir", committed_meanwhile(real_scandir))
    monkeypatch.setattr(os, "listdir", committed_meanwhile(real_listdir))
    assert store.clean_stale(tmp_path / "exp") == 0


def test_two_live_jobs_of_one_setting_never_mix_or_lose_rows(tmp_path):
    """Defect N1: both jobs of one setting staged in one shared .partial-<key> folder; the first
    commit renamed it away, the second job wrote into a new, nearly empty folder and its commit
    replaced the complete shard (0 of 80 rows kept), or a job that started after the other's first
    write took the live folder for a killed run and skipped its conditions. Each job now stages
    apart; the later commit replaces the earlier one whole."""
    first = make_writer(tmp_path)
    first.write("t", rows(2, 0), stage="s", condition="c1")
    second = make_writer(tmp_path)  # the same command again while the first still runs
    assert not second.resumed and not second.done("t", "s", "c1")  # a live job's rows are not its own
    first.write("t", rows(2, 10), stage="s", condition="c2")
    for cond, tag in (("c1", 100), ("c2", 110)):
        second.write("t", rows(2, tag), stage="s", condition=cond)
    first.commit({"job": 1})
    assert sorted(read_table(tmp_path / "a_fig1", "t")["value"]) == [0, 1, 10, 11]  # the first, whole
    second.commit({"job": 2})
    assert sorted(read_table(tmp_path / "a_fig1", "t")["value"]) == [100, 101, 110, 111]  # the second, whole
    runs = tmp_path / "a_fig1" / "runs"
    assert [p.name for p in runs.iterdir()] == [second.key]  # nothing staged is left behind


def test_an_abandoned_run_is_adopted_by_exactly_one_job(tmp_path):
    killed = make_writer(tmp_path)
    killed.write("t", rows(2, 0), stage="s", condition="c1")
    as_killed(killed)
    a, b = make_writer(tmp_path), make_writer(tmp_path)  # two re-runs racing for it
    assert [a.resumed, b.resumed] == [True, False] and a.done("t", "s", "c1") and not b.done("t", "s", "c1")


def test_a_disk_filling_after_the_commit_says_the_run_is_committed(tmp_path, monkeypatch):
    """Defect N2: with the disk filling after the swap, the run *was* committed but the message
    said it failed and "the previous file is intact"."""
    w = make_writer(tmp_path)
    w.write("t", rows(2), stage="s")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "rebuild_views", full)
    with pytest.raises(PipelineError) as info:
        w.commit({})
    message = str(info.value)
    assert message.startswith(f"the run is committed ({w.exp_dir / 'runs' / w.key}), but the merged views")
    assert "intact" not in message and "\n" not in message
    assert len(results.read_table(w.exp_dir, "t")) == 2


def test_a_killed_run_of_other_code_is_computed_again_not_resumed(tmp_path, monkeypatch):
    """Resumed rows kept the killed run's git_sha: one run's rows from two commits. A killed run
    is resumed only by the same code; otherwise its rows are computed again, said in one line."""
    killed = make_writer(tmp_path)
    killed.write("t", rows(2, 0), stage="s", condition="c1")
    as_killed(killed)
    monkeypatch.setattr(results, "git_sha", lambda: "newcode")
    again = make_writer(tmp_path)
    assert not again.resumed and not again.done("t", "s", "c1")
    again.write("t", rows(1, 5), stage="s", condition="c2")
    again.commit({})
    assert set(read_table(tmp_path / "a_fig1", "t")["git_sha"]) == {"newcode"}


def test_staging_folders_nobody_resumed_for_two_weeks_are_removed(tmp_path, capsys):
    """`.partial-*` folders of abandoned settings were never collected."""
    old, recent = make_writer(tmp_path, seed=1), make_writer(tmp_path, seed=2)
    for w in (old, recent):
        w.write("t", rows(1), stage="s")
        as_killed(w)
    runs = tmp_path / "a_fig1" / "runs"
    stale = next(runs.glob(f".partial-{old.key}*"))
    weeks_ago = time.time() - store.GC_AFTER_S - 60
    for p in (*stale.iterdir(), stale):
        os.utime(p, (weeks_ago, weeks_ago))
    make_writer(tmp_path, seed=3)
    assert f"removed {stale.name}" in capsys.readouterr().out
    assert [p.name.split(".")[1][len("partial-"):] for p in runs.glob(".partial-*")] == [recent.key]


def test_reproduce_costs_sum_each_shards_measured_run(tmp_path):
    """scripts/bench_reproduce.py (make reproduce): one row per recorded shard with the cost its
    manifest measured; benchmarks and the official-code reference are not runs of the record."""
    import importlib.util
    import json

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("bench_reproduce", ROOT / "scripts" / "bench_reproduce.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for folder, key, wall, cpu in (("exp_a", "m__d__seed0__1", 60.0, 110.0), ("exp_a", "m__d__seed1__2", 30.0, None),
                                   ("any_model/exp_b", "m__d__seed0__3", 12.5, 20.0), ("bench", "x", 1.0, 1.0)):
        shard = tmp_path / folder / "runs" / key
        shard.mkdir(parents=True)
        m = {"experiment": folder, "model": "m", "wall_s": wall, "config": {"model": {"name": "m"}}}
        if cpu is not None:
            m.update(cpu_s=cpu, threads=2, cores=2)
        (shard / "manifest.json").write_text(json.dumps(m))
    rows = bench.shard_costs(tmp_path)
    assert [(r["folder"], r["wall_s"], r["cpu_s"]) for r in rows] == [
        ("any_model/exp_b", 12.5, 20.0), ("exp_a", 60.0, 110.0), ("exp_a", 30.0, None)]
