"""A record that knows when it is stale: the files that produced a committed shard (its stage's
module and everything it imports inside the project, ``pipeline/context.py``'s loading chain, the
kernels they use, and the config files of its experiment, stage, model and data) compared with the
git commit its manifest names. Any of them changed since: the shard is **stale**, and the report
lists the changed files. ``python -m pipeline.report.stale --record`` (``make record-stale``)
re-runs exactly the stale shards into the record, with the overrides that rebuild each one's
setting (read off its manifest).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

from pipeline.core.imports import closure, import_graph, module_file
from pipeline.core.store import RUNS

ALWAYS = ("pipeline.context",)  # how every run loads its model and data


@dataclass(frozen=True)
class Staleness:
    shard: Path
    sha: str
    changed: tuple[str, ...]    # files changed since sha; () = current
    known: bool = True          # False: the commit is not in this clone's history


@cache
def _graph(repo: Path) -> dict[str, set[str]]:
    return import_graph(*(repo / p for p in ("pipeline", "kernels") if (repo / p).is_dir()))


def model_classes(repo: Path) -> dict[str, str]:
    """{model_type: module} of the model classes the project defines (a class attribute
    ``model_type = "..."`` in ``pipeline/models``: paper A's GPT-2, paper C's transformers)."""
    import ast

    found = {}
    for f in sorted((repo / "pipeline" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["model_type"]
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                found[node.value.value] = f"pipeline.models.{f.stem}"
    return found


def model_modules(repo: Path, manifest: dict) -> list[str]:
    """The project's model-class modules a shard's model ran on: by ``model_type`` (a model built
    here, or the type its manifest recorded for a loaded checkpoint); a checkpoint of unknown type
    (``source: local``, recorded before the type was) may be any of them; none for a published
    model (Hub, GGUF, ONNX, a local model shipped in a package, tiny: transformers' own classes)."""
    model = (manifest.get("config") or {}).get("model") or {}
    classes = model_classes(repo)
    kind = model.get("model_type") or manifest.get("model_type")
    if kind:
        return [classes[kind]] if kind in classes else []
    trained_here = model.get("source") == "local" and not model.get("package")  # a package ships a published one
    return sorted(set(classes.values())) if trained_here else []


def inputs_of(repo: Path, manifest: dict) -> list[str]:
    """Repository-relative files whose change can change a shard's numbers."""
    cfg = manifest.get("config") or {}
    roots = [repo / "pipeline", repo / "kernels"]
    classes = model_classes(repo)
    starts = [f"pipeline.stages.{s}" for s in cfg.get("stage", {})] + list(ALWAYS) + model_modules(repo, manifest)
    modules = closure(_graph(repo), starts, skip=frozenset(classes.values()))
    files = {str(f.relative_to(repo)) for m in modules if (f := module_file(m, roots))}
    run, model, data = cfg.get("run", {}), cfg.get("model", {}), cfg.get("data", {})
    conf = [f"conf/stage/{s}.yaml" for s in cfg.get("stage", {})] + [
        f"conf/experiment/{manifest.get('experiment', run.get('experiment'))}.yaml",
        f"conf/model/{model.get('name')}.yaml", f"conf/data/{data.get('name')}.yaml", "conf/config.yaml"]
    files |= {c for c in conf if (repo / c).is_file()}
    return sorted(files)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)


def check_shard(repo: Path, shard: Path) -> Staleness | None:
    """The staleness of one committed shard (None without a manifest that names a commit)."""
    try:
        manifest = json.loads((shard / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    sha = str(manifest.get("git_sha") or "").removesuffix("-dirty")
    if not sha or sha == "unknown" or not isinstance((manifest.get("config") or {}).get("model"), dict):  # a benchmark
        return None
    if _git(repo, "cat-file", "-e", f"{sha}^{{commit}}").returncode:
        return Staleness(shard, sha, (), known=False)
    files = inputs_of(repo, manifest)
    touched = _git(repo, "diff", "--name-only", sha, "--", *[f for f in files if f.endswith(".py")]).stdout.split()
    code = [f for f in touched if _code_changed(repo, sha, f)]
    conf = [f for f in files if f.endswith(".yaml") and _config_changed(repo, sha, f)]
    return Staleness(shard, sha, tuple(sorted(set(code) | set(conf))))


def _code_shape(text: str) -> str | None:
    """The program a file holds, without comments, layout and docstrings (None if it does not parse)."""
    import ast

    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


@cache
def _code_changed(repo: Path, sha: str, path: str) -> bool:
    """A Python file's program changed since ``sha``: a reformat, a wrapped line, an edited
    comment or docstring does not count (no number can change)."""
    old = _git(repo, "show", f"{sha}:{path}")
    now = repo / path
    if old.returncode or not now.is_file():
        return True
    before, after = _code_shape(old.stdout), _code_shape(now.read_text())
    return before is None or before != after


def _config_changed(repo: Path, sha: str, path: str) -> bool:
    """A config file's values changed since ``sha`` (comments, an experiment's report card and
    Hydra's own settings (where it writes, how it logs), which decide no number, do not count)."""
    import yaml

    def values(text: str) -> object:
        data = yaml.safe_load(text) or {}
        return {k: v for k, v in data.items() if k not in ("report", "hydra")} if isinstance(data, dict) else data

    old = _git(repo, "show", f"{sha}:{path}")
    if old.returncode:  # the file did not exist then
        return True
    return values(old.stdout) != values((repo / path).read_text())


def check_folder(repo: Path, folder: Path) -> list[Staleness]:
    """Every committed shard of a results folder (``runs/<key>/``; not the in-progress ``.partial-*``)."""
    runs = folder / "runs"
    shards = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs.is_dir() else []
    return [s for p in shards if (s := check_shard(repo, p)) is not None]


def summary(found: list[Staleness], limit: int = 6) -> str | None:
    """One line for the report, or None when every shard is current."""
    stale = [s for s in found if s.changed]
    if not stale:
        return None
    files = sorted({f for s in stale for f in s.changed})
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return (f"stale: {len(stale)} of {len(found)} shards were recorded before changes to "
            f"{', '.join(files[:limit])}{more} (make record-stale)")


# --- re-recording the stale shards ---------------------------------------------------------------
def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _leaves(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _override_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    text = str(value)
    if "\n" in text:
        raise ValueError("a value with a line break cannot be written on the command line")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def rerun_command(repo: Path, shard: Path) -> list[str]:
    """The ``python -m pipeline`` arguments that rebuild this shard's setting: its experiment and
    an override for every model / data / stage value that differs from that experiment's default."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    manifest = json.loads((shard / "manifest.json").read_text())
    cfg, folder = manifest["config"], shard.parents[1].name
    exps = sorted(p.stem for p in (repo / "conf" / "experiment").glob("*.yaml") if p.stem.startswith(folder)
                  and (OmegaConf.load(p).get("run") or {}).get("experiment") in (folder, None))
    exp = folder if folder in exps else exps[0]
    args = [f"experiment={exp}"]
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
        base = OmegaConf.to_container(compose("config", overrides=args), resolve=True)
        for group in ("model", "data"):  # a model or dataset of its own config file: chosen by name
            name = (cfg.get(group) or {}).get("name")
            if name != base[group].get("name") and (repo / "conf" / group / f"{name}.yaml").is_file():
                args.append(f"{group}={name}")
        base = OmegaConf.to_container(compose("config", overrides=args), resolve=True)
    for part in ("model", "data", "stage"):
        old, new = _leaves(base.get(part) or {}, f"{part}."), _leaves(cfg.get(part) or {}, f"{part}.")
        for key, value in new.items():
            if key.split(".")[-1].startswith("_") or key in (f"{part}.device", f"{part}.device_map"):
                continue
            if key not in old:
                args.append(f"+{key}={_override_value(value)}")
            elif old[key] != value:
                args.append(f"{key}={_override_value(value)}")
    return args


def _recorded_wall(shard: Path) -> float:
    try:
        return float(json.loads((shard / "manifest.json").read_text()).get("wall_s") or 0.0)
    except (OSError, ValueError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    """List the stale shards of the record (``--record``: re-run each into the record; ``--all``:
    every shard, current ones too: ``make reproduce``)."""
    import argparse
    import shutil
    import sys

    from pipeline.core.paths import REPO_ROOT
    from pipeline.core.results import rebuild_views
    from pipeline.core.store import tables_of

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--record", action="store_true")
    p.add_argument("--all", action="store_true", help="every shard, not only the stale ones (make reproduce)")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    p.add_argument("--only", default="*", help="comma-separated patterns of result folders, e.g. 'massive_*,atlas'")
    a = p.parse_args(argv)
    folders = sorted({r.parent for r in a.results.rglob(RUNS) if r.is_dir()})  # results/any_model/<exp> too
    wanted = [f for f in folders if any(fnmatch(str(f.relative_to(a.results)), pat) for pat in a.only.split(","))]
    stale = [s for f in wanted for s in check_folder(REPO_ROOT, f) if s.changed or a.all]
    costs = [_recorded_wall(s.shard) for s in stale]
    if a.record and stale:
        print(f"{len(stale)} shards to record; their last recording took {sum(costs) / 60:.0f} min of wall time "
              "(each shard's manifest; a busy machine takes longer)", flush=True)
    t0 = time.monotonic()
    for i, s in enumerate(stale):
        if a.record and i:
            left = sum(costs[i:]) * (time.monotonic() - t0) / max(sum(costs[:i]), 1.0)
            print(f"[{i}/{len(stale)}] {(time.monotonic() - t0) / 60:.0f} min so far; about {left / 60:.0f} min left "
                  "at this pace", flush=True)
        try:
            cmd = rerun_command(REPO_ROOT, s.shard)
            if s.shard.parents[2].resolve() != a.results.resolve():  # a results folder of its own
                cmd.append(f"run.results_dir={s.shard.parents[2].relative_to(REPO_ROOT)}")
        except (ValueError, KeyError, IndexError) as err:
            print(f"{s.shard.relative_to(a.results)}: stale, re-run by hand ({err})")
            continue
        state = f"stale since {s.sha} ({len(s.changed)} files)" if s.changed else f"current ({s.sha})"
        print(f"{s.shard.relative_to(a.results)}: {state}; python -m pipeline " + " ".join(cmd))
        if a.record:
            runs = s.shard.parent
            before = {p.name for p in runs.iterdir()}
            rc = subprocess.run([sys.executable, "-m", "pipeline", *cmd, "run.record=true"], cwd=REPO_ROOT).returncode
            if rc:
                print(f"  failed (exit {rc}); the record keeps the stale shard")
                continue
            new = sorted(p.name for p in runs.iterdir() if p.name not in before and not p.name.startswith("."))
            if new and s.shard.exists():  # the setting's hash changed (a new config key): the new shard replaces it
                shutil.rmtree(s.shard)
                rebuild_views(runs.parent, tables_of(runs.parent))
                print(f"  {s.shard.name} replaced by {', '.join(new)}")
    what = "shards" if a.all else "stale shards"
    print(f"{len(stale)} {what}" + ("" if a.record or not stale or a.all else "; make record-stale re-runs them"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
