"""The atlas row: a planted super weight that writes a massive activation is found with its
row marked as the massive dim; models the detector cannot handle say why."""

from pipeline.stages import atlas
from tests.helpers import make_ctx, plant_super_weight, run_stage


def test_planted_super_weight_and_its_massive_activation(tmp_path):
    ctx = make_ctx(tmp_path)
    plant_super_weight(ctx.model, layer_idx=1, row=5, col=9, weight=8.0)
    out = run_stage("atlas", ctx, n_inputs=2, seq_len=24)
    r = out["row"]
    assert (r["super_weight"], r["sw_layer"], r["sw_row"], r["sw_col"]) == ("yes", 1, 5, 9)
    # the spike it writes is massive by paper A's rule, in the same dim, from the same layer
    assert (r["massive"], r["massive_dim"], r["massive_layer"], r["sw_row_is_massive_dim"]) == ("yes", 5, 1, True)
    assert "super weight: layer 1 row 5 col 9" in atlas.format_summary(out)
    assert len(ctx.results.read("atlas")) == 1


def test_a_model_without_an_mlp_is_not_applicable(tmp_path):
    import dataclasses

    from pipeline.models.arch import get_arch
    from pipeline.models.birth import BirthConfig, BirthForCausalLM

    ctx = make_ctx(tmp_path)
    model = BirthForCausalLM(BirthConfig(vocab_size=len(ctx.tokenizer), dim=16, n_positions=64))
    r = run_stage("atlas", dataclasses.replace(ctx, model=model, arch=get_arch(model)), n_inputs=1, seq_len=16)["row"]
    assert r["super_weight"].startswith("not applicable: the model has no MLP down-projection")
    assert r["massive"] in ("none found", "yes")
