"""A record that knows when it is stale: a shard whose stage module (or anything it imports, or its
config values) changed after it was recorded is marked stale with the changed files; a re-run at
the new commit clears the mark. Checked in a small git repository laid out like the project."""

import json
import subprocess

from pipeline.report.stale import check_folder, summary


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo, message):
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "--short", "HEAD")


def _record(repo, sha, key="m__d__seed0__abc", model=None):
    shard = repo / "results" / "exp" / "runs" / key
    shard.mkdir(parents=True, exist_ok=True)
    (shard / "manifest.json").write_text(json.dumps({
        "experiment": "exp", "git_sha": sha,
        "config": {"stage": {"foo": {"k": 1}}, "model": model or {"name": "m"}, "data": {"name": "d"},
                   "run": {"experiment": "exp"}}}))


def test_stale_mark_appears_when_code_or_config_changes_and_goes_after_a_rerun(tmp_path):
    repo = tmp_path / "repo"
    for path, text in {"pipeline/__init__.py": "", "pipeline/context.py": "",
                       "pipeline/stages/__init__.py": "",
                       "pipeline/stages/foo.py": ("from pipeline.analysis.bar import f\n"
                                                  "from pipeline.models import load\n"),
                       "pipeline/stages/other.py": "", "pipeline/analysis/__init__.py": "",
                       "pipeline/analysis/bar.py": "def f():\n    return 1\n",
                       "pipeline/models/__init__.py": "from pipeline.models import helper, registered\n",
                       "pipeline/models/load.py": "", "pipeline/models/registered.py": "X = 1\n",
                       "pipeline/models/helper.py": "Y = 1\n",
                       "conf/stage/foo.yaml": "k: 1\n", "conf/model/m.yaml": "name: m\n",
                       "conf/experiment/exp.yaml": "run: {experiment: exp}\nreport: {title: t}\n"}.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(tmp_path, "init", "-q", str(repo))
    first = _commit(repo, "one")
    _record(repo, first)
    folder = repo / "results" / "exp"
    assert summary(check_folder(repo, folder)) is None  # nothing changed since it was recorded

    (repo / "pipeline/stages/other.py").write_text("x = 2\n")  # another stage: not this shard's code
    (repo / "conf/experiment/exp.yaml").write_text("# a comment\nrun: {experiment: exp}\nreport: {title: new}\n")
    _commit(repo, "unrelated")
    assert summary(check_folder(repo, folder)) is None  # comments and the report card decide no number

    (repo / "pipeline/analysis/bar.py").write_text("def f():\n    return 2\n")  # imported by the stage
    (repo / "conf/stage/foo.yaml").write_text("k: 2\n")
    second = _commit(repo, "changes the numbers")
    [found] = check_folder(repo, folder)
    assert found.changed == ("conf/stage/foo.yaml", "pipeline/analysis/bar.py")
    assert "stale: 1 of 1 shards" in summary([found]) and "pipeline/analysis/bar.py" in summary([found])

    _record(repo, second)  # the re-run at the new commit replaces the shard
    assert summary(check_folder(repo, folder)) is None

    # importing pipeline.models.load runs pipeline/models/__init__.py, which imports the project's
    # model classes and a helper: a change to the helper changes every run's numbers although no
    # import statement of the stage names it; a model class only its own model's runs
    (repo / "pipeline/models/helper.py").write_text("Y = 2\n")
    (repo / "pipeline/models/registered.py").write_text("class C:\n    model_type = 'mine'\n")
    third = _commit(repo, "a helper and a model class")
    [found] = check_folder(repo, folder)
    assert found.changed == ("pipeline/models/helper.py",)
    _record(repo, third)
    _record(repo, third, key="t__d__seed0__abc", model={"name": "t", "source": "init", "model_type": "mine"})
    (repo / "pipeline/models/registered.py").write_text("class C:\n    model_type = 'mine'\n    x = 1\n")
    _commit(repo, "the model class changes")
    assert [s.changed for s in check_folder(repo, folder)] == [(), ("pipeline/models/registered.py",)]  # m, t
