"""Stage sw_actquant, SmoothQuant and the quantization context managers on tiny models."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.core.errors import PipelineError
from pipeline.interventions import smoothquant as sq
from pipeline.interventions.quant import (
    outlier_channels,
    quantized_attention,
    quantized_inputs,
    quantized_modules,
    w8a8_attention,
)
from pipeline.models.matrices import WeightSite
from pipeline.stages import sw_actquant as aq
from tests.helpers import make_ctx, plant_super_weight, run_stage, snapshot, tiny, unchanged

KW = dict(ppl_data=["wiki_summaries"], ppl_seq_len=32, ppl_windows=2, calib_seq_len=32, calib_windows=2,
          eval_suite=None)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_smoothing_leaves_the_fp_function_unchanged(arch):
    model, tok = tiny(arch)
    model = model.double()
    ids = tok("Apple Inc. is a worldwide tech company. " * 3, return_tensors="pt").input_ids
    state = snapshot(model)
    act = sq.input_absmax(model, ids, "cpu")
    factors = sq.smoothing_factors(model, act, 0.85, smooth_down_proj=True)
    assert len(factors) == (3 if arch == "llama" else 2) * 4  # norm->attn, norm->mlp (+ up->down) per layer
    assert len(sq.smoothing_factors(model, act, 0.85)) == 2 * 4
    with torch.no_grad():
        ref = model(ids).logits
        with sq.smoothed(model, factors):
            assert not unchanged(model, state)
            got = model(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    assert unchanged(model, state)


def test_smoothing_flattens_the_activation_outlier():
    model, tok = tiny()
    ids = tok("Apple Inc. is a worldwide tech company.", return_tensors="pt").input_ids
    act = sq.input_absmax(model, ids, "cpu")
    name = "layers.1.self_attn.q_proj"
    x = act[name]
    (g, s), = [(g, s) for g, s in sq.smoothing_factors(model, act, 0.85) if g["consumers"][0][0] == name]
    assert (x / s).max() / (x / s).median() < x.max() / x.median()


def test_weightless_norm_is_reported_not_applicable():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("olmo", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(sq.NotApplicable, match="no weight"):
        sq.smoothing_factors(model, {}, 0.85)


def test_quantized_attention_is_eager_attention_when_nothing_rounds():
    model, tok = tiny()
    ids = tok("Apple Inc. is a worldwide tech company.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
        with quantized_attention(model):
            got = model(ids).logits
        after = model(ids).logits
    assert torch.equal(after, ref)  # implementation switched back
    assert (got - ref).abs().max() < 0.05 * ref.abs().max() and not torch.equal(got, ref)
    q = torch.randn(1, 2, 5, 8)
    mask = torch.zeros(1, 1, 5, 5)
    out, _ = w8a8_attention(torch.nn.Module(), q, q, q, mask, scaling=1.0)
    assert out.shape == (1, 5, 2, 8)


def test_outlier_channels_follow_the_super_weight(tmp_path):
    model, _ = tiny()
    mods = quantized_modules(model)
    assert not any(n.endswith("o_proj") for n in mods) and any(n.endswith("q_proj") for n in mods)
    out = outlier_channels(model, [WeightSite(1, 5, 9)], mods)
    assert out["layers.1.mlp.down_proj"] == [9]
    assert out["layers.2.self_attn.q_proj"] == [5] and out["layers.3.mlp.up_proj"] == [5]
    assert "layers.0.self_attn.q_proj" not in out and "layers.2.mlp.down_proj" not in out


def test_stage_end_to_end_with_planted_super_weight(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=0, row=5, col=9, weight=8.0, boost=200.0)
    state = snapshot(ctx.model)
    out = run_stage("sw_actquant", ctx, **KW)
    ppl = {r["condition"]: r["ppl_wiki_summaries"] for r in out["table"]}
    assert list(ppl) == list(aq.CONDITIONS)
    assert ppl["naive"] != ppl["fp"]
    aware = next(r for r in out["table"] if r["condition"] == "super_activation_aware")
    assert "recovered_vs_fp_wiki_summaries" in aware and "recovered_vs_smoothquant_wiki_summaries" in aware
    assert unchanged(ctx.model, state)
    assert len(ctx.results.read("sw_actquant_table")) == len(aq.CONDITIONS)
    assert "W8A8" in aq.format_summary(out)
    from pipeline.core.paper import paper_numbers

    text = aq.format_summary({**out, "paper": paper_numbers("super_weight", "llama_7b")})
    assert "Table 3" in text and "wikitext2 5.83" in text


def test_super_activation_aware_beats_naive_on_the_planted_layer(tmp_path):
    """A8 alone: replace-quantize-restore keeps the down projection's output far closer to fp (with
    per-tensor W8 on top, the planted 8.0 weight's scale would round the rest of that matrix)."""
    model, tok = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9, weight=8.0, boost=200.0)
    from pipeline.hooks.forward import capture

    ids = tok("Apple Inc. is a worldwide tech company.", return_tensors="pt").input_ids
    outl = outlier_channels(model, [WeightSite(0, 5, 9)], quantized_modules(model))
    down = model.model.layers[0].mlp.down_proj
    mods = {"layers.0.mlp.down_proj": down}  # the input that holds the super activation
    got = {}
    with torch.no_grad():
        for name, cm in [("fp", None), ("naive", quantized_inputs(mods, None)),
                         ("aware", quantized_inputs(mods, outl))]:
            with (cm or torch.no_grad()), capture({"d": down}, lambda n, y, k=name: got.__setitem__(k, y.clone())):
                model(ids)
    err = {k: float((got[k] - got["fp"]).abs().mean()) for k in ("naive", "aware")}
    assert err["aware"] < err["naive"] / 2, err


def test_unknown_condition_or_part_fails_clearly(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(PipelineError, match="unknown condition"):
        run_stage("sw_actquant", ctx, conditions=["fp", "gptq"], **KW)
    with pytest.raises(PipelineError, match="parts"):
        run_stage("sw_actquant", ctx, parts=["activations"], **KW)


def test_partial_w8a8_rows_are_labelled_by_part(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=0, row=5, col=9, weight=8.0, boost=200.0)
    out = run_stage("sw_actquant", ctx, parts=["inputs"], conditions=["fp", "naive", "super_activation_aware"], **KW)
    names = [r["condition"] for r in out["table"]]
    assert names == ["fp", "naive[inputs]", "super_activation_aware[inputs]"]
    aware = out["table"][2]
    gap = out["table"][1]["ppl_wiki_summaries"] - out["table"][0]["ppl_wiki_summaries"]
    want = 100 * (out["table"][1]["ppl_wiki_summaries"] - aware["ppl_wiki_summaries"]) / gap
    assert aware["recovered_vs_fp_wiki_summaries"] == pytest.approx(want)
    assert math.isnan(aware["recovered_vs_smoothquant_wiki_summaries"])


def test_the_smoothquant_protocol_quantizes_what_smoothquant_quantizes():
    """Issue 23: SmoothQuant's quantize_llama_like quantizes o_proj's input, weights per output
    channel and the q/k/v outputs, not the attention probabilities; paper B's text leaves o_proj."""
    from pipeline.hooks.forward import capture
    from pipeline.interventions.quant import w8a8

    model, tok = tiny()
    assert any(n.endswith("o_proj") for n in quantized_modules(model, "smoothquant"))
    assert not any(n.endswith("o_proj") for n in quantized_modules(model, "paper_b"))
    ids = tok("Apple Inc. is a worldwide tech company.", return_tensors="pt").input_ids
    q = model.model.layers[1].self_attn.q_proj
    seen = {}
    with torch.no_grad():
        for proto in ("paper_b", "smoothquant"):
            mods = quantized_modules(model, proto)
            with w8a8(model, mods, None, ("attention",), protocol=proto), \
                    capture({"q": q}, lambda n, y, k=proto: seen.__setitem__(k, y.clone())):
                model(ids)
    rows = seen["smoothquant"].reshape(-1, seen["smoothquant"].shape[-1])
    steps = rows / (rows.abs().amax(1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # q's output on the INT8 grid of its row
    assert not torch.allclose(seen["paper_b"], seen["paper_b"].round())  # paper B: quantized later, in the BMM


@pytest.mark.parametrize("in_out", [False, True])
def test_per_channel_weights_keep_a_smoothed_column_from_wrecking_the_rest(in_out):
    """Smoothing moves an activation outlier into one weight column; per-tensor INT8 then rounds
    every weight with the largest entry of that column as its scale (the broken baseline: 27.2
    perplexity on SmolLM2), per output channel each row with its own entry of it: the rounding
    error falls by about mean(row max) / max (0.43 here; about 0.3 for a Gaussian column)."""
    from kernels.tensor_quant import tensor_fake_quant
    from pipeline.interventions.quant import channel_fake_quant

    torch.manual_seed(0)
    w = torch.randn(64, 32) * 0.02
    w[:, 7] *= 200  # the smoothed column (in, out layout below: a row)
    stored = w.T.contiguous() if in_out else w
    per_channel = channel_fake_quant(stored, in_out)
    per_channel = per_channel.T if in_out else per_channel
    rest = torch.ones(32, dtype=torch.bool)
    rest[7] = False
    err_channel = (per_channel - w)[:, rest].abs().mean()
    err_tensor = (tensor_fake_quant(w) - w)[:, rest].abs().mean()
    assert err_channel < 0.6 * err_tensor, (err_channel, err_tensor)


def test_per_tensor_activations_use_one_scale_and_keep_the_outlier_exact():
    from pipeline.interventions.quant import tensor_act_fake_quant

    x = torch.randn(2, 5, 16)
    x[0, 0, 3] = 5000.0
    naive = tensor_act_fake_quant(x)
    assert float((naive - x)[..., :3].abs().max()) > 1.0  # one scale of 5000/127 wipes the rest out
    aware = tensor_act_fake_quant(x, [3])
    assert aware[0, 0, 3] == 5000.0 and float((aware - x).abs().max()) < 0.05


def test_protocol_and_activations_label_the_rows(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=0, row=5, col=9, weight=8.0, boost=200.0)
    out = run_stage("sw_actquant", ctx, protocol="smoothquant", activations="per_tensor", **KW)
    assert [r["condition"] for r in out["table"]] == [
        "fp", "naive[smoothquant; per_tensor]", "super_activation_aware[smoothquant; per_tensor]",
        "smoothquant[smoothquant; per_tensor]"]
    with pytest.raises(PipelineError, match="protocol must be one of paper_b, smoothquant"):
        run_stage("sw_actquant", ctx, protocol="gptq", **KW)
