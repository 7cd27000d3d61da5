"""Super-weight detection and reversible weight edits on tiny models with planted super weights."""

import pytest
import torch

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


def test_a_second_super_weight_with_a_smaller_input_is_found_in_the_same_row():
    """Issue 23: SmolLM2's layer 11 has two super weights in row 507; the second one's input
    (1,074) is below the output's threshold (5% of 24,000), so the input was judged on the wrong
    scale and the weight missed. Planted: W[5, 9] (input ~460) and W[5, 13] (input ~52, below
    the output threshold of ~160). The old rule (input threshold = output threshold) finds one."""
    model, tok = tiny()
    plant_super_weight(model, layer_idx=1, row=5, col=9, weight=8.0, boost=80.0)
    plant_super_weight(model, layer_idx=1, row=5, col=13, weight=8.0, boost=30.0)
    det = super_weight.detect(model, _ids(tok))
    assert [(f["layer"], f["row"], f["col"]) for f in det.found] == [(1, 5, 9), (1, 5, 13)]
    assert det.found[1]["in_value"] < det.threshold  # what the old rule required it to exceed
    old = super_weight.detect(model, _ids(tok), in_threshold=det.threshold)
    assert [(f["layer"], f["row"], f["col"]) for f in old.found] == [(1, 5, 9)]


def test_a_huge_input_times_an_ordinary_weight_is_a_decoy_not_a_super_weight():
    """Issue 23: SmolLM2's 28:17:678 (weight 0.42, about 2 sigma) was reported as a super weight
    because a 4,024 input made its product large. Planted: a real super weight in layer 0 and a
    huge input at column 13 of layer 2 whose weights are untouched."""
    from tests.helpers import layer

    model, tok = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9)
    mlp = layer(model, 2).mlp
    with torch.no_grad():
        mlp.up_proj.weight[13] *= 400
        mlp.gate_proj.weight[13] *= 400
    det = super_weight.detect(model, _ids(tok))
    assert [(f["layer"], f["row"], f["col"]) for f in det.found] == [(0, 5, 9)]
    assert [(f["layer"], f["col"]) for f in det.decoys] == [(2, 13)] and "std of its matrix" in det.decoys[0]["reason"]
    without_test = super_weight.detect(model, _ids(tok), min_weight_z=0)  # paper B's rule: no weight test
    assert (2, 13) in {(f["layer"], f["col"]) for f in without_test.found}


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
