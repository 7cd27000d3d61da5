"""Stage sw_ablate on a tiny model with a planted super weight."""

import torch

from pipeline.hooks.forward import capture
from pipeline.interventions.restore import prune_restore
from pipeline.interventions.weights import scale_weights
from pipeline.models.matrices import WeightSite
from pipeline.stages import sw_ablate
from tests.helpers import make_ctx, plant_super_weight, run_stage, tiny

KW = dict(ppl_data=["wiki_summaries"], ppl_seq_len=48, ppl_windows=4, eval_suite=None, batch_size=2,
          non_sw_min_per_matrix=2)


def test_restore_super_activation_puts_back_the_original_value():
    model, tok = tiny()
    plant_super_weight(model, layer_idx=0, row=5, col=9)
    site = WeightSite(0, 5, 9)
    ids = tok("Apple Inc. is a worldwide tech company. " * 2, return_tensors="pt").input_ids
    down = model.model.layers[0].mlp.down_proj
    got = {}
    with capture({"d": down}, lambda n, y: got.__setitem__("orig", y.clone())), torch.no_grad():
        model(ids)
    with prune_restore(model, [site]), capture({"d": down}, lambda n, y: got.__setitem__("rest", y.clone())):
        with torch.no_grad():
            model(ids)
    with scale_weights(model, [site], 0.0), capture({"d": down}, lambda n, y: got.__setitem__("pruned", y.clone())):
        with torch.no_grad():
            model(ids)
    t = int(got["orig"][0, :, 5].abs().argmax())
    assert torch.allclose(got["rest"][0, t, 5], got["orig"][0, t, 5], rtol=1e-5)
    others = torch.ones_like(got["rest"], dtype=torch.bool)
    others[0, t, 5] = False
    assert torch.equal(got["rest"][others], got["pruned"][others])  # only the super activation
    assert not down._forward_hooks


def test_conditions_on_a_planted_super_weight(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=0, row=5, col=9)
    state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = run_stage("sw_ablate", ctx, **KW)
    assert out["sites"] == [WeightSite(0, 5, 9)]
    ppl = {r["condition"]: r["ppl_wiki_summaries"] for r in out["table"]}
    base = ppl["original"]
    d = {c: abs(ppl[c] / base - 1) for c in ppl}
    assert d["prune_sw"] > 0.01, ppl
    # A random tiny model does not rely on its super activation the way a trained one does, so
    # the perplexity ordering of paper B is checked on SmolLM2 (tests/real/test_real.py); here, that
    # restoring the activation brings the output at the super activation's token back towards
    # the original (the planted weight spikes at every token; the restore, as paper B's, at one):
    ids = ctx.tokenizer("Apple Inc. is a worldwide tech company. It sells phones.", return_tensors="pt").input_ids
    down = ctx.model.model.layers[0].mlp.down_proj
    got = {}
    with torch.no_grad(), capture({"d": down}, lambda n, y: got.setdefault("y", y.clone())):
        ref = ctx.model(ids).logits
    t = int(got["y"][0, :, 5].abs().argmax())
    with torch.no_grad():
        with scale_weights(ctx.model, out["sites"], 0.0):
            pruned = ctx.model(ids).logits
        with prune_restore(ctx.model, out["sites"]):
            restored = ctx.model(ids).logits
    assert (restored[0, t] - ref[0, t]).abs().mean() < 0.5 * (pruned[0, t] - ref[0, t]).abs().mean()
    assert all(torch.equal(v, state[k]) for k, v in ctx.model.state_dict().items())
    fig4 = ctx.results.read("sw_layer_max")
    peak = fig4.groupby("condition")["max_abs"].max()
    assert peak["prune_sw"] < peak["original"] / 5
    assert set(fig4["condition"]) == set(sw_ablate.CONDITIONS)
    assert "prune_non_sw" in sw_ablate.format_summary(out)
