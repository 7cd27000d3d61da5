"""One time per artefact: every cost the project quotes comes from the committed manifests
(pipeline.report.costs); the report cards say what a run needs, never how long it takes."""

import json
import re

from pipeline.report.artefacts import ARTEFACTS
from pipeline.report.costs import recorded_cost


def _shard(folder, name, **cost):
    d = folder / "runs" / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"config": {"model": {"name": "m"}}, **cost}))


def test_recorded_cost_sums_the_runs_and_says_what_was_not_measured(tmp_path):
    assert recorded_cost(tmp_path) is None
    _shard(tmp_path, "a", wall_s=600.0)
    cost = recorded_cost(tmp_path)
    assert (cost.runs, cost.wall_s, cost.cpu_s) == (1, 600.0, None)
    assert cost.describe() == "10 min wall over 1 run (CPU time not measured: recorded before the manifests had it)"
    _shard(tmp_path, "b", wall_s=300.0, cpu_s=540.0)
    cost = recorded_cost(tmp_path)
    assert (cost.runs, cost.wall_s, cost.cpu_s, cost.cpu_runs) == (2, 900.0, 540.0, 1)
    assert cost.describe() == "15 min wall over 2 runs, 9 min CPU time of 1"
    assert cost.describe(short=True) == "15 min (9 min CPU)"


def test_seed_repeats_are_counted_apart(tmp_path):
    """Issue 26: the pack's cost is one seed per artefact; make record-seeds' repeats apart."""
    _shard(tmp_path, "s0", seed=0, wall_s=600.0, cpu_s=1200.0)
    _shard(tmp_path, "s1", seed=1, wall_s=300.0, cpu_s=600.0)
    _shard(tmp_path, "s2", seed=2, wall_s=300.0, cpu_s=600.0)
    cost = recorded_cost(tmp_path)
    assert (cost.runs, cost.wall_s, cost.repeats.runs, cost.repeats.wall_s) == (1, 600.0, 2, 600.0)
    assert cost.describe() == ("10 min wall over 1 run, 20 min CPU time; "
                               "seed repeats apart: 10 min wall over 2 runs, 20 min CPU time")
    assert cost.describe(short=True) == "10 min (20 min CPU)"


def test_a_benchmark_manifest_is_not_a_run(tmp_path):
    d = tmp_path / "runs" / "bench"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"config": {"model": "smollm2"}, "wall_s": 5}))
    assert recorded_cost(tmp_path) is None


def test_no_card_quotes_a_duration():
    timed = [(a.experiment, a.hardware) for a in ARTEFACTS
             if re.search(r"\d\s*(s|sec|min|minutes|h|hours)\b", a.hardware)]
    assert not timed, f"a card's hardware names a time (make help reads it from the manifests): {timed}"
