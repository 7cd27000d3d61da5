"""Super weights in a mixture-of-experts model: per-expert detection, edits and restore (tiny Mixtral)."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.analysis import super_weight
from pipeline.hooks.forward import capture
from pipeline.hooks.moe import expert_down_io, routed_calls
from pipeline.interventions.restore import prune_restore
from pipeline.interventions.weights import largest_weights, scale_weights
from pipeline.models.arch import layer_module
from pipeline.models.matrices import WeightSite, decoder_matrices, down_proj_matrix

LAYER, ROW, COL = 0, 5, 9


def _model(model_type="mixtral"):
    torch.manual_seed(0)
    kw = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, vocab_size=128, num_experts_per_tok=2)
    kw |= {"num_local_experts": 4} if model_type == "mixtral" else {"num_experts": 4, "pad_token_id": 0,
                                                                     "bos_token_id": 1, "eos_token_id": 2}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw)).eval()


IDS = torch.tensor([[1, 17, 33, 8, 90, 41, 5, 77, 23, 64, 12, 3]])


def _routing(model, ids=IDS):
    seen = []
    h = routed_calls(layer_module(model, LAYER, "down_proj"), seen)
    with torch.no_grad():
        model(ids)
    h.remove()
    return seen[0]


def _plant(model, expert, boost=80.0, weight=8.0):
    experts = layer_module(model, LAYER, "down_proj")
    inter = experts.down_proj.shape[2]
    with torch.no_grad():
        experts.gate_up_proj[expert][COL] *= boost  # gate half
        experts.gate_up_proj[expert][inter + COL] *= boost  # up half
        experts.down_proj[expert][ROW, COL] = weight


def _routed_expert(model):
    """The expert most tokens of IDS are routed to in layer 0 (routing precedes the experts, so
    planting in it does not change which tokens reach it)."""
    _, top_index, _ = _routing(model)
    return int(top_index.flatten().mode().values)


@pytest.mark.parametrize("model_type", ["mixtral", "olmoe"])
def test_recomputed_expert_outputs_sum_to_the_container_output(model_type):
    model = _model(model_type)
    hidden, top_index, top_weights = _routing(model)
    experts = layer_module(model, LAYER, "down_proj")
    got = {}
    with capture({"e": experts}, lambda n, y: got.__setitem__("y", y.clone())), torch.no_grad():
        model(IDS)
    total = sum((top_weights * (top_index == e)).sum(-1, keepdim=True)
                * expert_down_io(experts, "down_proj", hidden, top_index, e)[2] for e in range(4))
    torch.testing.assert_close(total, got["y"].reshape(total.shape), rtol=1e-5, atol=1e-6)


def test_detects_the_planted_super_weight_in_its_expert():
    model = _model()
    expert = _routed_expert(model)
    _plant(model, expert)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found, maxima, _hs, threshold, *_ = super_weight.detect(model, IDS)
    assert [(f["layer"], f.get("expert"), f["row"], f["col"]) for f in found] == [(LAYER, expert, ROW, COL)]
    assert found[0]["role"] == "creates" and found[0]["share"] > 0.9
    assert maxima[LAYER]["out_expert"] == expert and maxima[LAYER]["out_channel"] == ROW
    assert abs(maxima[LAYER]["out_max"]) > threshold > max(abs(m["out_max"]) for m in maxima[1:])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_expert_sites_edit_only_their_expert_and_restore_exactly():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    site = WeightSite(LAYER, ROW, COL, expert=2)
    with scale_weights(model, [site], 0.0):
        assert float(down_proj_matrix(model, LAYER, 2)[ROW, COL]) == 0.0
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
        assert changed == [f"model.layers.{LAYER}.mlp.experts.down_proj"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_restore_super_activation_in_an_expert():
    model = _model()
    expert = _routed_expert(model)
    _plant(model, expert)
    site = WeightSite(LAYER, ROW, COL, expert=expert)
    experts = layer_module(model, LAYER, "down_proj")
    got = {}
    for name, ctx in [("orig", None), ("pruned", scale_weights(model, [site], 0.0)),
                      ("rest", prune_restore(model, [site]))]:
        with (ctx or torch.no_grad()), capture({"e": experts}, lambda n, y, k=name: got.__setitem__(k, y.clone())):
            with torch.no_grad():
                model(IDS)
    t = int(got["orig"][:, ROW].abs().argmax())
    assert abs(float(got["orig"][t, ROW])) > 100 * abs(float(got["pruned"][t, ROW]))
    torch.testing.assert_close(got["rest"][t, ROW], got["orig"][t, ROW], rtol=1e-4, atol=1e-3)
    others = torch.ones_like(got["rest"], dtype=torch.bool)
    others[t, ROW] = False
    assert torch.equal(got["rest"][others], got["pruned"][others])
    assert not experts._forward_hooks


def test_non_super_weight_selection_covers_experts_and_excludes_the_super_weight():
    model = _model()
    expert = _routed_expert(model)
    _plant(model, expert, weight=50.0)  # the largest entry of its expert's down projection
    picks = largest_weights(model, 0.0, min_per_matrix=1)
    w_down = down_proj_matrix(model, LAYER, expert)
    assert any(w.data_ptr() == w_down.data_ptr() and idx == (ROW, COL) for w, idx in picks)
    # every expert slice takes part (counted by identity: shape alone also matches attention matrices)
    expert_slices = {m.stored.data_ptr() for m in decoder_matrices(model) if m.expert is not None}
    assert len(expert_slices) == 3 * 4 * 2 and expert_slices <= {w.data_ptr() for w, _ in picks}
    picks = largest_weights(model, 0.0, min_per_matrix=1, exclude=[WeightSite(LAYER, ROW, COL, expert)])
    assert not any(w.data_ptr() == w_down.data_ptr() and idx == (ROW, COL) for w, idx in picks)
