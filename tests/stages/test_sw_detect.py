"""Super-weight detection and reversible weight edits on tiny models with planted super weights."""

import pytest

from pipeline.analysis import super_weight
from pipeline.config.shared import SuperWeightDetection
from pipeline.interventions.weights import largest_weights, scale_weights, zero_weights
from pipeline.models.matrices import WeightSite, down_proj_matrix
from pipeline.stages import sw_detect
from tests.helpers import make_ctx, plant_super_weight, run_stage, snapshot, tiny, unchanged

PROMPT = "Apple Inc. is a worldwide tech company."


def _ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_detects_exactly_the_planted_super_weight(arch):
    model, tok = tiny(arch)
    plant_super_weight(model, layer_idx=1, row=5, col=9)
    state = snapshot(model)
    found, maxima, _hs, threshold, *_ = super_weight.detect(model, _ids(tok))
    assert [(f["layer"], f["row"], f["col"]) for f in found] == [(1, 5, 9)]
    assert found[0]["role"] == "creates" and found[0]["share"] > 0.9
    assert maxima[1]["out_channel"] == 5 and maxima[1]["in_channel"] == 9
    assert abs(maxima[1]["out_max"]) > threshold > abs(maxima[0]["out_max"])
    assert unchanged(model, state)  # detection zeroes weights only temporarily


def test_iteration_finds_a_second_weight_behind_the_first():
    model, tok = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9, weight=8.0)
    plant_super_weight(model, layer_idx=0, row=5, col=13, weight=4.0)
    found = super_weight.detect(model, _ids(tok))[0]
    assert [(f["layer"], f["row"], f["col"]) for f in found] == [(0, 5, 9), (0, 5, 13)]
    assert [f["iteration"] for f in found] == [0, 1]


def test_no_super_weight_in_a_random_model():
    model, tok = tiny()
    assert super_weight.detect(model, _ids(tok))[0] == []


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_scale_weights_restores_exactly_also_on_error(arch):
    model, _ = tiny(arch)
    state = snapshot(model)
    site = WeightSite(1, 3, 7)
    original = float(down_proj_matrix(model, 1)[3, 7])
    with scale_weights(model, [site], 2.5):
        assert float(down_proj_matrix(model, 1)[3, 7]) == pytest.approx(original * 2.5)
    assert unchanged(model, state)
    with pytest.raises(RuntimeError), scale_weights(model, [site], 0.0):
        raise RuntimeError("boom")
    assert unchanged(model, state)
    with scale_weights(model, [site], 1.0):
        assert unchanged(model, state)


def test_gpt2_view_addresses_the_stored_conv1d_weight():
    model, _ = tiny("gpt2")
    stored = model.transformer.h[0].mlp.c_proj.weight  # Conv1D: (in, out)
    with scale_weights(model, [WeightSite(0, row=3, col=100)], 0.0):
        assert stored[100, 3] == 0  # W[row=out 3, col=in 100]


def test_largest_weights_skip_super_weights_and_restore():
    model, _ = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9)
    state = snapshot(model)
    sw = [WeightSite(0, 5, 9)]
    with_sw = largest_weights(model, fraction=0.0, min_per_matrix=2)
    without = largest_weights(model, fraction=0.0, min_per_matrix=2, exclude=sw)
    down = down_proj_matrix(model, 0)
    assert any(w.data_ptr() == down.data_ptr() and idx == (5, 9) for w, idx in with_sw)
    assert len(without) == len(with_sw) - 1
    with zero_weights(without):
        assert down[5, 9] == 8.0 and all(w[idx] == 0 for w, idx in without)
    assert unchanged(model, state)


def test_stage_writes_directory_and_figure_table(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=1, row=5, col=9)
    out = run_stage("sw_detect", ctx, detect_prompt=PROMPT)
    d = ctx.results.read("sw_directory")
    assert list(zip(d["layer"], d["row"], d["col"], strict=True)) == [(1, 5, 9)]
    assert len(ctx.results.read("sw_down_proj_max")) == 4
    assert "W[5, 9]" in sw_detect.format_summary(out)
    assert super_weight.super_weights(ctx, SuperWeightDetection(detect_prompt=PROMPT)) == [WeightSite(1, 5, 9)]
