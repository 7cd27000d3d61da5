"""``python -m pipeline [experiment=...] [model=...] [data=...] [overrides]``: one Hydra run.

compose config -> build Context once -> each selected stage in order -> CSVs (+ manifest, W&B)
-> figures from the CSVs -> a one-screen summary.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.loggers import argv_has_secret
from pipeline.core.paths import CONF_DIR

CHECKED_GROUPS = ("model", "data", "experiment", "logger", "debug", "stage", "variant", "setting")


def check_choices(argv: list[str]) -> None:
    """Fail with one line on an unknown config choice (Hydra's own error is a screenful)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in CHECKED_GROUPS or value in ("", "null"):
            continue
        known = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for choice in value.strip("[]").split(","):
            if choice and choice not in known:
                raise PipelineError(f"unknown {key} '{choice}'; known: {', '.join(known)}")
            if choice:
                check_file(CONF_DIR / key / f"{choice}.yaml")


def check_file(path: Path) -> None:
    """A config file that is not YAML, or not a mapping (a list, a bare string), fails in one line
    naming the file and the place (Hydra's message was a traceback)."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PipelineError(f"{path.relative_to(CONF_DIR.parent)} is not valid YAML{where}: "
                            f"{getattr(err, 'problem', None) or err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise PipelineError(f"{path.relative_to(CONF_DIR.parent)}: a config file is a mapping of keys "
                            f"(name: ..., source: ...), not a {type(loaded).__name__}")


def check_root_keys(argv: list[str]) -> None:
    """``device=gpu`` got Hydra's "Key 'device' is not in struct ... use +device=gpu" (the wrong
    fix): a top-level key that is neither a config group nor a root key fails in one line, with
    the dotted key it probably means (``model.device``, ``run.seed``)."""
    import yaml

    from pipeline.validate import model_keys

    run_keys = set((yaml.safe_load((CONF_DIR / "config.yaml").read_text()) or {}).get("run", {}))
    roots = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} | {"run", "catalog", "hydra", "protocol"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith(("+", "~", "-")) or "." in key or "/" in key or key in roots:
            continue
        near = [f"{group}.{key}" for group, keys in (("model", model_keys()[0]), ("run", run_keys)) if key in keys]
        meant = "cuda" if key == "device" and value == "gpu" else value
        hint = f"; did you mean {near[0]}={meant}?" if near else f"; config groups: {', '.join(sorted(roots))}"
        raise PipelineError(f"{key}={value}: not a config key{hint}")


def run(cfg) -> dict:
    """Run every stage of a composed config; returns {stage name: stage output}."""
    from pipeline.config import selected_stages
    from pipeline.validate import validate

    t0, load, cpu0 = time.perf_counter(), _load_average(), cpu_seconds()
    stages = selected_stages(cfg)  # typed and range-checked: one line, before anything heavy imports
    validate(cfg)  # names, where results go, and what needs the model's shape (its config file alone)

    from omegaconf import OmegaConf

    from pipeline.context import build_context  # torch, transformers: only once the config is sound
    from pipeline.core.ranks import adopt_slurm_env, process_rank
    from pipeline.core.registry import get_stage
    from pipeline.figures import draw_experiment
    from pipeline.models.preflight import check_architecture

    check_architecture(OmegaConf.to_container(cfg.model, resolve=True))  # before any weight loads
    adopt_slurm_env()  # a SLURM job with N tasks (submitit launcher) is one DDP run of N ranks
    ctx = build_context(cfg)
    outputs = {}
    try:
        for name, args in stages.items():
            print(f"[pipeline] stage {name} on {ctx.model_name} / {ctx.data_cfg['name']}", flush=True)
            outputs[name] = get_stage(name).run(ctx, args)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("catalog", None)  # the whole catalog: only the entries used are recorded
        manifest = ctx.results.commit(resolved, {**run_cost(t0, load, cpu0), "catalog_used": ctx.catalog.used_entries(),
                                                 "model_type": getattr(ctx.model.config, "model_type", None)})
        figures = draw_experiment(ctx.out_dir, list(outputs)) if cfg.run.figures and not process_rank()[0] else []
    finally:
        ctx.logger.finish()
        if process_rank()[0]:  # torchrun / SLURM tasks: ranks > 0 wrote to a scratch folder, never kept
            import shutil

            shutil.rmtree(ctx.results.root, ignore_errors=True)
    if process_rank()[0]:
        return outputs  # rank 0 reports
    _report(outputs, ctx.out_dir, manifest, figures)
    return outputs


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on this platform
        return None


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process and the children it waited for have used so far.
    The counters are process-wide: a multirun's jobs share one process, so a run's cost is the
    difference from its start (read whole, each later job counted every earlier one: Fig. 4's
    seventh variant claimed 2,857 CPU seconds for 215 s of wall time)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(who) for who in
                                                   (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def run_cost(t0: float, load_at_start: float | None, cpu_at_start: float = 0.0) -> dict:
    """What a run cost, for the manifest: wall seconds, CPU seconds of this process and of the
    children it waited for since ``cpu_at_start`` (user + system), the threads torch computed with,
    the cores the machine has and the 1-minute load average at the start and the end (a busy
    machine makes wall time longer than the work: ``cpu_s / wall_s`` well under ``threads`` says so)."""
    import torch

    return {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(cpu_seconds() - cpu_at_start, 1),
            "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "load_start": load_at_start, "load_end": _load_average()}


def _report(outputs: dict, out_dir: Path, manifest: Path, figures: list[Path]) -> None:
    """Each stage's one-screen summary (its ``format_summary``), then where the files are."""
    from pipeline.core.registry import get_stage

    for name, out in outputs.items():
        print()
        print(get_stage(name).summary(out))
    print(f"\nresults: {out_dir}/ (CSVs), manifest {manifest}")
    for f in figures:
        print(f"figure:  {f}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, a job scheduler or ``kill`` send first): handled like Ctrl-C."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated


def main() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        check_choices(sys.argv[1:])
        check_root_keys(sys.argv[1:])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if argv_has_secret(sys.argv[1:]):
        if "-m" in sys.argv or "--multirun" in sys.argv:  # Hydra saves multirun.yaml whatever we say
            print("error: do not pass secrets as overrides to a multirun (Hydra writes them to "
                  "multirun.yaml); export them as environment variables (HF_TOKEN, WANDB_API_KEY)",
                  file=sys.stderr)
            sys.exit(2)
        # Hydra writes the overrides and the config to .hydra/*.yaml: not with a secret in them
        sys.argv.append("hydra.output_subdir=null")
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _entry(cfg) -> None:
        try:
            run(cfg)
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            if "SUBMITIT_FOLDER" in os.environ:  # a SLURM job of the submitit launcher: raise, so that the
                raise                            # launcher sees the job fail (an exit code it never reads)
            sys.exit(2)
        except KeyboardInterrupt as stop:
            what = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
            print(f"\n{what}: nothing half-written; finished conditions are kept and a re-run "
                  "of the same command resumes", file=sys.stderr)
            sys.exit(143 if isinstance(stop, Terminated) else 130)

    _entry()


if __name__ == "__main__":
    main()
