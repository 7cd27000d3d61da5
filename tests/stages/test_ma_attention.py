"""Stage ma_attention (paper A §4): attention on massive-activation tokens, the implicit bias."""

from types import SimpleNamespace

import pytest
import torch

from pipeline.analysis.attention import (
    attention_share,
    capture_attention_weights,
    constancy,
    control_share,
    decompose_output,
    eager_attention,
    expand_kv_heads,
    uniform_share,
)
from pipeline.core.errors import PipelineError
from pipeline.figures import draw_experiment
from pipeline.models.arch import layer_module
from pipeline.stages import ma_attention
from tests.helpers import make_ctx, planted, run_stage

# Hand-built head-wise attention (H=3, T=4), causal rows summing to 1.
PROBS = torch.tensor([
    [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.6, 0.2, 0.2, 0], [0.7, 0.1, 0.1, 0.1]],
    [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0.8, 0.1, 0.1, 0], [0.4, 0.2, 0.2, 0.2]],
    [[1, 0, 0, 0], [0.2, 0.8, 0, 0], [0.3, 0.3, 0.4, 0], [0.1, 0.3, 0.3, 0.3]],
])


def test_attention_share_by_hand():
    # S = {0}: queries 1..3, p_i0 = (.5 .6 .7), (.9 .8 .4), (.2 .3 .1) -> 4.5 / 9
    assert attention_share(PROBS, [0]) == pytest.approx(0.5)
    # S = {0, 2}: query 1 sees only key 0; queries 2, 3 add key 2 -> (1.6 + 2.4 + 1.8) / 9
    assert attention_share(PROBS, [0, 2]) == pytest.approx(5.8 / 9)
    # S = {1}: queries 2, 3 only -> (.2 + .1 + .1 + .2 + .3 + .3) / 6
    assert attention_share(PROBS, [1]) == pytest.approx(1.2 / 6)
    # control, S = {0}: one of the i keys 1..i at random: (1 - p_i0) / i
    assert control_share(PROBS, [0]) == pytest.approx((0.8 + 0.4 + 1.45) / 9)
    assert uniform_share(4, [0]) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert attention_share(PROBS[:, :1, :1], [0]) != attention_share(PROBS[:, :1, :1], [0])  # NaN


def test_constancy_of_constant_and_varying_rows():
    cos, var = constancy(torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]))
    assert cos == pytest.approx(1.0) and var > 0  # same direction, different length
    cos, var = constancy(torch.tensor([[1.0, 2.0]] * 4))
    assert cos == pytest.approx(1.0) and var == pytest.approx(0.0, abs=1e-12)
    cos, _ = constancy(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert cos == pytest.approx((0 - 1 + 0) / 3)


def test_eager_switch_restores_the_implementation_also_on_error(tmp_path):
    model = make_ctx(tmp_path).model
    model.set_attn_implementation("sdpa")
    attn = {"0": layer_module(model, 0, "attn")}
    ids = torch.tensor([[5, 6, 7, 8]])
    seen = []
    with eager_attention(model), capture_attention_weights(attn, lambda _n, w: seen.append(w)):
        assert model.config._attn_implementation == "eager"
        model(ids)
    assert model.config._attn_implementation == "sdpa"
    assert seen[0].shape == (1, 4, 4, 4) and torch.allclose(seen[0].sum(-1), torch.ones(1, 4, 4))
    with pytest.raises(RuntimeError, match="boom"), eager_attention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(PipelineError, match="eager_attention"), capture_attention_weights(attn, print):
        model(ids)  # sdpa returns no weights: a clear error, not a silent None


def test_kv_heads_expand_in_repeat_kv_order():
    from transformers.models.llama.modeling_llama import repeat_kv

    v = torch.randn(5, 2 * 3)  # T=5, 2 KV heads of dim 3
    ours = expand_kv_heads(v, n_heads=4, head_dim=3)  # (T, H, d)
    theirs = repeat_kv(v.reshape(1, 5, 2, 3).transpose(1, 2), 2)[0].transpose(0, 1)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("model_type", ["llama", "phi", "opt"])
def test_parts_reconstruct_the_o_proj_output(model_type, tmp_path):
    """part_S + part_rest (+ the bias, in neither part) equals the o_proj output the model makes."""
    if model_type == "llama":
        model = make_ctx(tmp_path).model  # 4 query heads, 2 KV heads: the grouping matters
    else:
        from tests.unit.test_arch import tiny_model  # phi: GQA and o_proj bias; opt: out_proj bias

        model = tiny_model(model_type)
    ctx = SimpleNamespace(model=model, device=torch.device("cpu"))
    ids = torch.tensor([[3, 9, 14, 15, 26, 5, 35, 8, 97]])
    rec = ma_attention.record_attention(ctx, ids, [1])
    o_proj = ma_attention.attention_site(model, 1, "o_proj")
    probs, n_heads = rec["probs"][1], rec["probs"][1].shape[0]
    values = expand_kv_heads(rec["v"][1], n_heads, o_proj.in_features // n_heads)
    part_s, part_rest = decompose_output(probs, values, o_proj.weight.detach(), [0, 4])
    bias = o_proj.bias.detach().double() if o_proj.bias is not None else 0.0
    actual = rec["o"][1].double()
    torch.testing.assert_close(part_s + part_rest + bias, actual, rtol=1e-4, atol=1e-4 * float(actual.abs().max()))
    assert (o_proj.bias is not None) == (model_type != "llama")
    row = ma_attention.decomposition_row(ctx, 1, rec, [0, 4])
    assert row["max_recon_rel_err"] < 1e-4 and row["n_queries"] == 4


def test_planted_activation_gives_the_massive_token_and_layer(tmp_path):
    ctx = make_ctx(tmp_path)
    with planted(ctx.model, layer_idx=1, dim=7, value=5000.0, position=0):
        out = run_stage("ma_attention", ctx)
    assert out["massive_layer"] == 1
    assert [t["position"] for t in out["massive_tokens"]] == [0]
    assert out["massive_tokens"][0]["token_type"] == "first_token"
    assert out["layers"] == [2, 3] and out["token_set"] == "massive"  # auto: after, middle, last
    shares = out["share_rows"]
    assert [r["layer"] for r in shares] == [0, 1, 2, 3]
    assert [r["massive_positions_at_output"] for r in shares] == ["", "0", "0", "0"]
    assert all(0 <= r["share_massive"] <= 1 and 0 <= r["share_control"] <= 1 for r in shares)
    decomp = out["decomp_rows"]
    assert [r["layer"] for r in decomp] == [2, 3]
    assert all(r["max_recon_rel_err"] < 1e-4 and -1 <= r["cos_massive"] <= 1 for r in decomp)


def test_tables_written_and_figures_drawn_from_csv(tmp_path):
    ctx = make_ctx(tmp_path)
    with planted(ctx.model, layer_idx=1, dim=7, value=5000.0, position=0):
        out = run_stage("ma_attention", ctx, decomp_layers=[1, 2, 3])
    share = ctx.results.read("ma_attention_share")
    assert len(share) == 4 and (share["stage"] == "ma_attention").all()
    assert {"layer", "share_massive", "share_control", "n_massive_tokens"} <= set(share.columns)
    assert ctx.results.read("ma_attention_decomposition")["layer"].tolist() == [1, 2, 3]
    maps = ctx.results.read("ma_attention_maps")
    n = out["n_tokens"]
    assert len(maps) == 2 * n * (n + 1) // 2 and (maps["key"] <= maps["query"]).all()
    row0 = maps[(maps["layer"] == 2) & (maps["query"] == 0)]
    assert row0["prob"].tolist() == pytest.approx([1.0]) and row0["logprob"].tolist() == pytest.approx([0.0], abs=1e-6)
    sums = maps[maps["layer"] == 3].groupby("query")["prob"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5)
    run_stage("ma_attention", ctx)  # a re-run replaces its rows
    assert len(ctx.results.read("ma_attention_share")) == 4
    ctx.results.commit({})  # the figures read the committed record only
    figs = draw_experiment(ctx.out_dir)
    assert sorted(p.name for p in figs) == ["attention_decomposition_tiny_llama.png", "attention_maps_tiny_llama.png",
                                            "attention_share_tiny_llama.png"]
    assert all(p.stat().st_size > 10_000 for p in figs)
    text = ma_attention.format_summary(out)
    assert "first_token" in text and "decomposition over 3 layers (1..3)" in text


def test_gpt2_has_shares_but_no_decomposition(tmp_path):
    ctx = make_ctx(tmp_path, "gpt2")
    with planted(ctx.model, layer_idx=1, dim=7, value=5000.0, position=0):
        out = run_stage("ma_attention", ctx, layers=[2])
    assert out["massive_layer"] == 1 and len(out["share_rows"]) == 4
    assert out["decomp_rows"] == [] and "no decomposition" in out["notes"][0]
    assert "ma_attention_decomposition" not in out["paths"]


def test_no_massive_activation_falls_back_to_the_first_token_and_says_so(tmp_path):
    out = run_stage("ma_attention", make_ctx(tmp_path), layers=[1])
    assert out["massive_layer"] is None and out["token_set"].startswith("first_token")
    assert "no steady massive activation" in ma_attention.format_summary(out)


def test_out_of_range_layer_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="out of range"):
        run_stage("ma_attention", make_ctx(tmp_path), layers=[99])
    with pytest.raises(PipelineError, match="out of range"):
        run_stage("ma_attention", make_ctx(tmp_path), decomp_layers=[-1])


def test_model_outputs_bit_identical_after_the_stage(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.model.set_attn_implementation("sdpa")
    ids = torch.tensor([[3, 9, 14, 15, 26, 5, 35, 8]])
    with torch.no_grad():
        before = ctx.model(ids).logits
    run_stage("ma_attention", ctx)
    with torch.no_grad():
        after = ctx.model(ids).logits
    assert ctx.model.config._attn_implementation == "sdpa"
    assert torch.equal(before, after)
    assert not any(m._forward_hooks for m in ctx.model.modules())


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_attention_sink_and_implicit_bias(tmp_path):
    """Paper A §4 on SmolLM2-135M: after the massive layer, attention concentrates on the
    massive-activation token, and its value update is nearly constant across queries."""
    from omegaconf import OmegaConf

    from pipeline.context import Context
    from pipeline.core.loggers import Logger
    from pipeline.core.results import ResultsWriter
    from pipeline.data.text import build_source
    from pipeline.models.arch import get_arch, num_layers
    from pipeline.models.load import load_model
    from tests.unit.test_config import CONF

    model, tok, device = load_model(OmegaConf.to_container(OmegaConf.load(CONF / "model" / "smollm2_135m.yaml")))
    data_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "wiki_summaries.yaml"))
    results = ResultsWriter(tmp_path, "real", model="smollm2_135m", revision=None,
                            dataset=data_cfg["name"], seed=0, device="cpu")
    ctx = Context(model=model, tokenizer=tok, arch=get_arch(model), device=device, model_name="smollm2_135m",
                  paper_key=None, data_cfg=data_cfg, source=build_source(data_cfg), results=results,
                  logger=Logger(), experiment="real", seed=0)
    out = run_stage("ma_attention", ctx, decomp_layers="after_massive")
    ml = out["massive_layer"]
    assert ml is not None and [t["token_type"] for t in out["massive_tokens"]] == ["first_token"]
    after = [r for r in out["share_rows"] if r["layer"] > ml]
    # concentration: S (one token) gets several times what a random other key gets, in every layer
    assert all(r["share_massive"] > 5 * r["share_control"] and r["share_massive"] > 0.4 for r in after)
    decomp = out["decomp_rows"]
    assert [r["layer"] for r in decomp] == list(range(ml + 1, num_layers(model)))
    assert all(r["max_recon_rel_err"] < 1e-4 for r in decomp)
    # implicit bias: part_S is more constant than part_rest in every layer, and nearly constant
    # in the typical layer (median over the layers)
    assert all(r["cos_massive"] > r["cos_rest"] and r["relvar_massive"] < r["relvar_rest"] for r in decomp)
    median = sorted(decomp, key=lambda r: r["cos_massive"])[len(decomp) // 2]
    assert median["cos_massive"] > 0.9
    assert sorted(r["relvar_massive"] for r in decomp)[len(decomp) // 2] < 0.15


def test_figures_of_a_model_with_two_settings_in_the_record_draw_the_latest_one(tmp_path):
    """A re-run whose setting changed committed beside the old shard of the same model, and the
    attention-map figure merged both (84 token labels for 42 positions: a crash after the commit)."""
    import dataclasses

    from pipeline.core.results import ResultsWriter

    for i in range(2):  # the same prompt, two settings
        ctx = make_ctx(tmp_path)
        ctx = dataclasses.replace(ctx, results=ResultsWriter(tmp_path / "results", "test_exp", model="tiny_llama",
                                                             revision=None, dataset="tiny_text", seed=0, device="cpu",
                                                             setting={"run": i}))
        with planted(ctx.model, layer_idx=1, dim=7, value=5000.0, position=0):
            run_stage("ma_attention", ctx, decomp_layers=[1], prompt="Apple Inc. is a tech company.")
        ctx.results.commit({})
    assert ctx.results.read("ma_attention_maps")["setting"].nunique() == 2
    assert any("attention_maps" in f.name for f in draw_experiment(ctx.out_dir))
