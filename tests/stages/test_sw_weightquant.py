"""Stage sw_weightquant on tiny models with a planted super weight."""

import math

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.interventions.quant import RTN_METHODS, quantized_model
from pipeline.models.matrices import WeightSite, decoder_matrices, down_proj_matrix
from pipeline.stages import sw_weightquant as wq
from tests.helpers import make_ctx, plant_super_weight, run_stage, snapshot, tiny, unchanged

SITE = WeightSite(0, 5, 9)
KW = dict(ppl_data=["wiki_summaries"], ppl_seq_len=32, ppl_windows=2, eval_suite=None, calib_seq_len=32,
          calib_windows=2, z_grid=[3, 6, math.inf])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_quantized_model_restores_exactly_and_keeps_the_super_weight(arch):
    model, _ = tiny(arch)
    plant_super_weight(model, layer_idx=0, row=5, col=9, weight=8.0)
    state = snapshot(model)
    sw = float(down_proj_matrix(model, 0)[5, 9])
    before = {m.name: m.stored.clone() for m in decoder_matrices(model)}
    with quantized_model(model, method="rtn_clip_restore", bits=4, block_size=4096, z=3.0, sites=[SITE]):
        assert float(down_proj_matrix(model, 0)[5, 9]) == sw
        # every decoder matrix differs from ITS OWN values before quantization (comparing with a
        # fresh model, which the planted super weight already differs from, could not fail)
        changed = [m.name for m in decoder_matrices(model) if not torch.equal(m.stored, before[m.name])]
        assert changed == list(before)
    assert unchanged(model, state)
    with quantized_model(model, method="rtn", bits=4, block_size=4096, sites=[SITE]):
        assert float(down_proj_matrix(model, 0)[5, 9]) != sw  # plain RTN rounds (and clips nothing)
    assert unchanged(model, state)
    with pytest.raises(RuntimeError), quantized_model(model, method="rtn", bits=4, block_size=64):
        raise RuntimeError("boom")
    assert unchanged(model, state)


def test_amplified_super_weight():
    model, _ = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9, weight=8.0)
    state = snapshot(model)
    with quantized_model(model, method="rtn_clip_restore", bits=4, block_size=64, z=3.0, sites=[SITE], sw_scale=1.5):
        assert float(down_proj_matrix(model, 0)[5, 9]) == pytest.approx(12.0)
    assert unchanged(model, state)


def test_clip_restore_beats_rtn_at_large_blocks_and_error_falls_with_block_size(tmp_path):
    model, tok = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9, weight=8.0)
    ids = tok("Apple Inc. is a worldwide tech company. " * 4, return_tensors="pt").input_ids
    inputs = wq.calibration_inputs(model, ids, "cpu")
    err = {(m, b): wq.reconstruction_error(model, inputs, method=m, bits=4, block_size=b, z=4.0, sites=[SITE])
           for m in RTN_METHODS for b in (64, 1024, 1 << 20)}
    assert err[("rtn", 64)] < err[("rtn", 1024)] < err[("rtn", 1 << 20)]
    assert err[("rtn_clip_restore", 1 << 20)] < 0.75 * err[("rtn", 1 << 20)]
    z, rows = wq.choose_z(model, inputs, bits=4, block_size=1 << 20, z_grid=[2, 4, math.inf], sites=[SITE])
    best = min((r for r in rows if r["method"] == "rtn_clip_restore"), key=lambda r: r["rel_error"])
    assert z == best["z"] and sum(r["chosen"] for r in rows) == 1


def test_stage_end_to_end(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=0, row=5, col=9, weight=8.0)
    state = snapshot(ctx.model)
    out = run_stage("sw_weightquant", ctx, block_sizes=[64, 1 << 20], **KW)
    assert out["sites"] == [SITE]
    names = [r["condition"] for r in out["table"]]
    assert names == ["original", "rtn_b64", "rtn_clip_restore_b64", "rtn_b1048576", "rtn_clip_restore_b1048576"]
    ppl = {r["condition"]: r["ppl_wiki_summaries"] for r in out["table"]}
    assert ppl["rtn_b64"] != ppl["original"]
    assert set(out["z"]) == {64, 1 << 20} and all(z in (3, 6, math.inf) for z in out["z"].values())
    assert len(ctx.results.read("sw_weightquant_table")) == 5 and len(ctx.results.read("sw_weightquant_z"))
    assert unchanged(ctx.model, state)
    assert "z chosen" in wq.format_summary(out)
    from pipeline.core.paper import paper_numbers

    text = wq.format_summary({**out, "paper": paper_numbers("super_weight", "mistral_7b")})
    assert "Fig. 7" in text and "1048576: 33.82" in text
    from pipeline.figures import draw_experiment

    ctx.results.commit({})
    assert (tmp_path / "results" / "test_exp" / "sw_weightquant_table.csv").exists()  # the merged view
    drawn = draw_experiment(tmp_path / "results" / "test_exp")
    assert any(p.name == "sw_fig7_block_sizes_tiny_llama.png" and p.stat().st_size > 0 for p in drawn)


def test_bad_method_fails_clearly(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(PipelineError, match="unknown method"):
        run_stage("sw_weightquant", ctx, methods=["gptq"], **KW)


def test_tiles_replace_block_sizes(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=0, row=5, col=9, weight=8.0)
    out = run_stage("sw_weightquant", ctx, tile=[8, 8], methods=["rtn"], include_original=False, **KW)
    assert [r["condition"] for r in out["table"]] == ["rtn_t8x8"] and out["table"][0]["tile"] == "8x8"
    with pytest.raises(PipelineError, match="tile"):
        run_stage("sw_weightquant", ctx, tile=[8], **KW)


def test_calibration_inputs_cap_keeps_first_tokens():
    model, tok = tiny()
    ids = torch.randint(3, 100, (3, 20))
    full = wq.calibration_inputs(model, ids, "cpu")
    capped = wq.calibration_inputs(model, ids, "cpu", max_tokens=15)
    name = "layers.1.mlp.down_proj"
    assert full[name].shape[0] == 60 and capped[name].shape[0] == 15
    assert torch.equal(capped[name][0], full[name][0]) and torch.equal(capped[name][5], full[name][20])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reconstruction_error_matches_the_modules_own_outputs(arch):
    """Orientation check, incl. GPT-2's square Conv1D (attn.c_proj): error from module forwards."""
    from kernels.block_quant import block_fake_quant

    model, _ = tiny(arch)
    ids = torch.randint(3, 100, (2, 12))
    inputs = wq.calibration_inputs(model, ids, "cpu")
    name = "layers.1.attn.c_proj" if arch == "gpt2" else "layers.1.self_attn.o_proj"
    mod = {m.name: m.module for m in decoder_matrices(model)}[name]
    x = inputs[name]
    with torch.no_grad():
        ref = mod(x)
        saved = mod.weight.detach().clone()
        mod.weight.copy_(block_fake_quant(saved, 4, 64))
        got = mod(x)
        mod.weight.copy_(saved)
    bias = mod.bias.detach() if mod.bias is not None else 0
    want = float((ref - got).pow(2).sum() / (ref - bias).pow(2).sum())
    err = wq.reconstruction_error(model, {name: x}, method="rtn", bits=4, block_size=64, z=None, sites=[])
    assert err == pytest.approx(want, rel=1e-4)


def test_z_search_scores_every_matrix_it_quantizes_experts_included():
    """Defect: two walkers disagreed; on MoE models the z search (2-D linears only) scored the
    attention and router matrices while quantization also rewrote every expert slice."""
    from tests.stages.test_sw_moe import IDS, _model

    model = _model()
    inputs = wq.calibration_inputs(model, IDS.repeat(2, 1), "cpu")
    names = [m.name for m in decoder_matrices(model)]
    assert sum(".experts." in n for n in names) == 3 * 4 * 2  # layers x experts x (gate_up, down)
    routed = {n for n in names if ".experts." in n and n in inputs}
    assert len(routed) >= 3 * 2 * 2  # each token goes to 2 of 4 experts in each of 3 layers
    assert set(inputs) <= set(names) and {n for n in names if ".experts." not in n} <= set(inputs)
    m = next(m for m in decoder_matrices(model) if m.name in routed and m.param == "down_proj")
    assert inputs[m.name].shape[1] == m.stored.shape[1]  # an expert slice is (out, in): its intermediate width
    err = wq.reconstruction_error(model, inputs, method="rtn", bits=4, block_size=64, z=None, sites=[])
    only_experts = wq.reconstruction_error(model, {n: inputs[n] for n in routed}, method="rtn", bits=4,
                                           block_size=64, z=None, sites=[])
    assert 0 < only_experts and 0 < err


def test_official_clipping_is_per_block_on_absolute_values():
    """Issue 23: the official quantize_blockwise clamps each block to +-(mean|w| + z std|w|) of that
    block; the project clipped the whole tensor to its signed mean +- z std (now ``clip=text``)."""
    import torch

    from pipeline.interventions.quant import clip_weights, z_clip

    torch.manual_seed(0)
    w = torch.randn(4, 8)
    w[0, 0] = 40.0  # an outlier in the first block of 8
    out = clip_weights(w, 2.0, 8, "official")
    a = w[0].abs()
    assert out[0, 0] == pytest.approx(float(a.mean() + 2.0 * a.std()))
    assert torch.equal(out[1:], w[1:].clamp(-(w[1:].abs().mean(1, keepdim=True) + 2 * w[1:].abs().std(1, keepdim=True)),
                                            w[1:].abs().mean(1, keepdim=True) + 2 * w[1:].abs().std(1, keepdim=True)))
    lo, hi = z_clip(w, 2.0)
    assert torch.equal(clip_weights(w, 2.0, 8, "text"), w.clamp(lo, hi))
    whole = clip_weights(w, 2.0, 5, "official")  # 5 does not divide 32: the tensor is one block
    assert whole.max() == pytest.approx(float(w.abs().mean() + 2.0 * w.abs().std()))
    assert torch.equal(clip_weights(w, float("inf"), 8, "official"), w)


def test_a_ragged_block_size_is_a_short_last_block_or_per_tensor_as_the_official_code():
    import torch

    from kernels.block_quant import block_fake_quant
    from pipeline.interventions.quant import int_fake_quant

    torch.manual_seed(0)
    w = torch.randn(6, 10)  # 60 elements; 16 does not divide them
    assert torch.equal(int_fake_quant(w, bits=4, block_size=16), block_fake_quant(w, 4, 16))
    assert torch.equal(int_fake_quant(w, bits=4, block_size=16, ragged="per_tensor"), block_fake_quant(w, 4, 60))
    with pytest.raises(PipelineError, match="clip must be one of official, text"):
        int_fake_quant(w, bits=4, block_size=16, clip="percentile")
