"""Stage sw_scale (paper B Fig. 6) on a tiny Llama with a planted super weight."""

import math

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.evaluation.perplexity import perplexity
from pipeline.figures import draw_experiment
from pipeline.interventions.weights import scale_weights
from pipeline.stages import sw_scale
from tests.helpers import as_killed, run_stage, snapshot, unchanged
from tests.stages.test_sw_stopwords import PLANTED, planted_ctx

KW = dict(ppl_data=["wiki_summaries"], ppl_seq_len=48, ppl_windows=3, eval_suite=None, batch_size=2)


def test_scale_one_is_the_original_model_bitwise(tmp_path):
    ctx = planted_ctx(tmp_path)
    ids = ctx.tokenizer("Summer is hot. Winter is cold.", return_tensors="pt").input_ids
    with torch.inference_mode():
        reference = ctx.model(input_ids=ids).logits
        with scale_weights(ctx.model, [PLANTED], 1.0):
            assert torch.equal(ctx.model(input_ids=ids).logits, reference)
        with scale_weights(ctx.model, [PLANTED], 1.5):
            assert not torch.equal(ctx.model(input_ids=ids).logits, reference)
        assert torch.equal(ctx.model(input_ids=ids).logits, reference)


def test_scales_perplexity_tables_and_figure(tmp_path):
    ctx = planted_ctx(tmp_path)
    state = snapshot(ctx.model)
    windows = ctx.eval_windows(["wiki_summaries"], 48, 3)["wiki_summaries"]
    original_ppl = perplexity(ctx.model, windows, batch_size=2)["ppl"]
    out = run_stage("sw_scale", ctx, scales=[0, 1, 2], **KW)
    assert unchanged(ctx.model, state)
    assert out["sites"] == [PLANTED]
    ppl = {r["scale"]: r["ppl_wiki_summaries"] for r in out["table"]}
    assert ppl[1.0] == original_ppl  # scale 1 = the untouched model, exactly
    # measured on this planted model: scale 0 and 2 move ppl by a few percent
    assert abs(ppl[0.0] - original_ppl) / original_ppl > 1e-3 and ppl[2.0] != original_ppl
    table = ctx.results.read("sw_scale_table")
    assert list(table["condition"]) == ["scale_0", "scale_1", "scale_2"]
    assert list(table["scale"]) == [0.0, 1.0, 2.0] and (table["super_weights"] == "0:7:5").all()
    long = ctx.results.read("sw_scale")
    assert len(long) == 6 and set(long["eval"]) == {"perplexity"} and set(long["metric"]) == {"ppl", "kl"}
    kl = {r["scale"]: r["kl_wiki_summaries"] for r in out["table"]}
    assert kl[1.0] == 0.0 and kl[0.0] > 0 and kl[2.0] > 0  # KL from the unmodified model (scale 1)
    assert "scale" in sw_scale.format_summary(out)
    ctx.results.commit({})  # the figures read the committed record only
    figs = draw_experiment(ctx.out_dir)
    assert any(f.name == "fig6_scaling_tiny_llama.png" and f.stat().st_size > 0 for f in figs)


def test_one_scale_per_job_fills_one_table_and_reruns_replace(tmp_path):
    """A Hydra multirun over stage.sw_scale.scales=[0],[1] writes the same rows as one list."""
    ctx = planted_ctx(tmp_path)
    run_stage("sw_scale", ctx, scales=[1], **KW)
    run_stage("sw_scale", ctx, scales=[0], **KW)
    run_stage("sw_scale", ctx, scales=[1], **KW)  # a re-run replaces its rows
    table = ctx.results.read("sw_scale_table").sort_values("scale")
    assert list(table["condition"]) == ["scale_0", "scale_1"]
    assert len(ctx.results.read("sw_scale")) == 4  # ppl and kl per scale


@pytest.mark.slow  # 5-8 s: make test-fast leaves it out
def test_with_zero_shot_suite(tmp_path):
    ctx = planted_ctx(tmp_path)
    out = run_stage("sw_scale", ctx, **{**KW, "scales": [0, 1], "eval_suite": "paper_b", "zero_shot_limit": 2,
                               "eval_batch_size": 4})
    tasks = {r["eval_data"] for r in out["rows"] if r["eval"] == "zero_shot" and r["metric"] == "acc"}
    assert tasks == {"arc_challenge", "arc_easy", "hellaswag", "lambada_openai", "piqa", "sciq", "winogrande"}
    assert all(0.0 <= t["acc_mean"] <= 1.0 and t["zero_shot_limit"] == 2 for t in out["table"])
    ctx.results.commit({})
    assert draw_experiment(ctx.out_dir)


@pytest.mark.parametrize("scales", [[], [1, 1], [math.inf]])
def test_bad_scales_are_a_clear_error(tmp_path, scales):
    with pytest.raises(PipelineError, match="scales"):
        run_stage("sw_scale", planted_ctx(tmp_path), scales=scales, **KW)


def test_condition_names():
    assert [sw_scale.condition_name(s) for s in (0.0, 0.1, 1.0, 1.5, 3)] == [
        "scale_0", "scale_0.1", "scale_1", "scale_1.5", "scale_3"]


def test_condition_loop_averages_the_suites_primary_metric(tmp_path, monkeypatch):
    """Defect: sw_scale had its own copy of the condition loop, which averaged the suite's
    primary_metric while the shared loop averaged "acc"; there is one loop now, reading the suite."""
    from pipeline.evaluation import conditions

    fake = [{"task": "a", "metric": "acc", "value": 0.1, "stderr": 0.0, "n": 1},
            {"task": "a", "metric": "acc_norm", "value": 0.9, "stderr": 0.0, "n": 1}]
    monkeypatch.setattr(conditions, "load_suite",
                        lambda name, catalog=None: {"tasks": ["a"], "primary_metric": "acc_norm"})
    monkeypatch.setattr(conditions, "zero_shot", lambda *a, **k: fake)
    out = run_stage("sw_scale", planted_ctx(tmp_path), **{**KW, "scales": [1], "eval_suite": "x"})
    assert out["table"][0]["acc_mean"] == 0.9 and out["table"][0]["acc_a"] == 0.9


def test_an_interrupted_sweep_resumes_after_its_finished_scales(tmp_path, monkeypatch):
    """Defect: sw_scale kept finished scales but computed them again on a re-run. A killed run's
    staged conditions are now read back by a re-run of the same setting."""
    from pipeline.evaluation import conditions

    ctx = planted_ctx(tmp_path)
    real = conditions.perplexity
    calls = []

    def dies_on_the_third(*a, **k):
        calls.append(k.get("desc"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(conditions, "perplexity", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_stage("sw_scale", ctx, scales=[0, 1, 2], **KW)
    monkeypatch.setattr(conditions, "perplexity", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
    calls.clear()
    as_killed(ctx.results)  # the killed process is gone
    again = planted_ctx(tmp_path)  # a new process, the same setting
    assert again.results.resumed
    out = run_stage("sw_scale", again, scales=[0, 1, 2], **KW)
    # only the unfinished scale is computed, after the unmodified model's pass that its KL needs
    assert calls == ["ppl wiki_summaries [unmodified]", "ppl wiki_summaries [scale_2]"]
    assert [r["scale"] for r in out["table"]] == [0.0, 1.0, 2.0]
    again.results.commit({})
    from pipeline.core.results import read_table

    assert len(read_table(again.out_dir, "sw_scale_table")) == 3
