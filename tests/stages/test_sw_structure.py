"""Super weights behind a post-MLP norm, and massive activations no single weight explains.

Defects: on a model that normalises the MLP output before the residual (Gemma-2/3, OLMo-2: gains
of 150-790 on a real one), the detector's floor on the raw down-projection output (0.07-1.8 there)
found nothing and wrote an empty table; and a massive dim written by several consecutive MLPs
(each explained by one weight, rebuilt by the others when one is zeroed) made the iteration chase
it layer after layer until it gave up.
"""

from __future__ import annotations

import torch

from pipeline.analysis import super_weight
from pipeline.models.arch import layer
from pipeline.models.matrices import down_proj_matrix
from pipeline.stages import sw_detect
from tests.helpers import make_ctx, plant_super_weight, run_stage, snapshot, tiny, unchanged

PROMPT = "Apple Inc. is a worldwide tech company."


def _ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


def behind_a_norm(model):
    """A super weight whose raw down-projection output is small and whose post-MLP norm makes
    it massive in the residual."""
    plant_super_weight(model, layer_idx=1, row=5, col=9, weight=8.0, boost=80.0)
    with torch.no_grad():
        down_proj_matrix(model, 1).mul_(1e-4)  # raw outputs tiny; shares unchanged
        layer(model, 1).post_feedforward_layernorm.weight[5] = 300.0  # a large gain, as a real model's
    return model


def test_a_super_weight_behind_a_post_mlp_norm_is_found_where_it_joins_the_residual():
    model, tok = tiny("gemma3", add_bos=True)
    behind_a_norm(model)
    state = snapshot(model)
    det = super_weight.detect(model, _ids(tok))
    assert [(f["layer"], f["row"], f["col"]) for f in det.found] == [(1, 5, 9)]
    f = det.found[0]
    # the raw output is below paper B's floor of 50; what joins the residual is far above it
    assert abs(f["down_out"]) < 50 < det.threshold < abs(f["out_value"])
    assert f["role"] == "creates" and f["share"] > 0.9 and unchanged(model, state)
    assert det.maxima[1]["residual_channel"] == 5


def written_by_three_mlps(model, tok):
    """The <bos> embedding carries a huge feature in dim 7 (a massive activation no MLP writes);
    layers 1, 2 and 3 each read it through one hidden unit and write dim 5 through one weight,
    so each layer's write is explained by one weight and, zeroed, is kept up by the other two."""
    bos = tok.bos_token_id
    with torch.no_grad():
        model.get_input_embeddings().weight[bos, 7] = 3000.0
        for i in (1, 2, 3):
            mlp, unit = layer(model, i).mlp, 20 + i
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight[unit] = 0.0
                proj.weight[unit, 7] = 1.0
            mlp.down_proj.weight[5, unit] = 5.0
    return model


def test_a_dim_written_by_several_mlps_is_reported_as_distributed_not_as_super_weights(tmp_path):
    ctx = make_ctx(tmp_path, add_bos=True)
    written_by_three_mlps(ctx.model, ctx.tokenizer)
    out = run_stage("sw_detect", ctx, detect_prompt=PROMPT)
    assert out["directory"] == []  # none of the three is essential on its own
    assert {(r["layer"], r["row"]) for r in out["rebuilt"]} == {(1, 5), (2, 5), (3, 5)}
    assert all(0.5 <= r["survives"] < 0.9 for r in out["rebuilt"])
    by_dim = {(r["token"], r["dim"]): r for r in out["structure"]}
    dim5, dim7 = by_dim[(0, 5)], by_dim[(0, 7)]
    assert dim5["writer_layers"] == "1 2 3" and dim5["min_writer_share"] > 0.9
    assert dim5["structure"].startswith("distributed: written by 3 MLPs") and dim5["remaining_after_top_writer"] >= 0.5
    assert dim7["structure"].startswith("not written by an MLP")
    assert "distributed" in sw_detect.format_summary(out) and ctx.results.read("sw_structure").shape[0] == 2


def test_a_single_super_weight_is_reported_as_one(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=1, row=5, col=9)
    out = run_stage("sw_detect", ctx, detect_prompt=PROMPT)
    top = out["structure"][0]  # the largest massive activation first
    assert top["dim"] == 5 and top["structure"].startswith("one super weight: layer 1 W[5, 9]")
    assert top["remaining_after_detected"] < 0.5
