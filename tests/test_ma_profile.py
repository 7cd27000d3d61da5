"""Stage ma_profile on tiny models: planted outliers are found where they were planted."""

import pytest

from pipeline.core.errors import PipelineError
from pipeline.figures import draw_experiment
from pipeline.stages import ma_profile
from tests.helpers import make_ctx, planted

KW = dict(n_sequences=4, seq_len=32, batch_size=2, abs_threshold=100.0, rel_threshold=1000.0,
          max_hits=16, delimiters=[".", "\n"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_planted_outlier_found_at_its_layer_dim_and_token(tmp_path, arch):
    ctx = make_ctx(tmp_path, arch)
    with planted(ctx.model, layer_idx=1, dim=7, value=5000.0, position=0):
        out = ma_profile.run(ctx, **KW)
    massive = out["massive"]
    assert massive, "the planted activation must be detected"
    top = massive[0]
    assert (top["dim"], top["first_layer"], top["token_type"]) == (7, 1, "first_token")
    assert top["frac_sequences"] == 1.0 and top["ratio_to_median"] > 1000
    assert {m["dim"] for m in massive} == {7}  # nothing else in a random tiny model
    assert out["fig1_layer"] == 1  # auto = where they first appear
    stats = out["layer_rows"]
    assert stats[0]["top1"] < 100 < stats[1]["top1"]


def test_no_planted_outlier_means_none_found(tmp_path):
    out = ma_profile.run(make_ctx(tmp_path), **KW)
    assert out["massive"] == []
    assert "none found" in ma_profile.format_summary(out)


def test_stage_writes_tables_and_figures_redraw_from_csv(tmp_path):
    ctx = make_ctx(tmp_path)
    with planted(ctx.model, layer_idx=2, dim=3, value=-8000.0, position=0):
        out = ma_profile.run(ctx, **KW)
    for table in ("ma_layer_stats", "ma_activations", "ma_massive", "ma_fig1"):
        df = ctx.results.read(table)
        assert len(df) > 0 and (df["stage"] == "ma_profile").all()
    assert len(ctx.results.read("ma_layer_stats")) == 4
    fig1 = ctx.results.read("ma_fig1")
    n_tokens = len(ctx.tokenizer("Summer is warm. Winter is cold.", add_special_tokens=False).input_ids)
    assert len(fig1) == n_tokens * 64
    row = ctx.results.read("ma_massive").iloc[0]
    assert row["dim"] == 3 and row["value_mean"] < -7000
    # a re-run replaces its own rows instead of appending
    ma_profile.run(ctx, **KW)
    assert len(ctx.results.read("ma_layer_stats")) == 4
    ctx.results.commit({})  # the figures read the committed record only
    figs = draw_experiment(ctx.out_dir)
    assert {p.name.split("_")[0] for p in figs} == {"fig3", "fig1"} and all(p.stat().st_size > 10_000 for p in figs)
    assert "first_token" in ma_profile.format_summary(out)


def test_fig1_layer_out_of_range_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="out of range"):
        ma_profile.run(make_ctx(tmp_path), **{**KW, "fig1_layer": 99})


def test_paper_comparison_for_a_paper_model():
    from pipeline.core.paper import paper_numbers

    paper = paper_numbers("massive_activations", "llama2_7b")  # published numbers: read, not copied
    dims, first = sorted(paper["massive_dims"]["value"]), int(paper["first_layer_1based"]["value"])
    layer_rows = [{"layer": i, "top1": t, "top2": t / 2, "top3": t / 4, "median": 0.2}
                  for i, t in enumerate([5.0, 2500.0, 2400.0])]
    # a made-up detection: the first published dim steady, another dim steady, dim 7 rare
    massive = [{"dim": dims[0], "token_type": "first_token", "first_layer_1based": first + 1, "frac_sequences": 1.0, "steady": True},
               {"dim": 11, "token_type": "first_delimiter", "first_layer_1based": first + 1, "frac_sequences": 0.9, "steady": True},
               {"dim": 7, "token_type": "other", "first_layer_1based": 5, "frac_sequences": 0.1, "steady": False}]
    rows = {r["quantity"]: r for r in ma_profile.compare_with_paper(paper, layer_rows, massive)}
    assert rows["massive_dims"]["ours"] == str(sorted([dims[0], 11]))  # the rare dim 7 is not a steady one
    assert rows["massive_dims"]["paper"] == str(paper["massive_dims"]["value"])
    assert rows["first_layer_1based"]["ours"] == str(first + 1) and rows["first_layer_1based"]["paper"] == str(first)
    assert rows["table1_top"]["ours"] == "[2500.0, 1250.0, 625.0]" and not rows["table1_top"]["paper_verified"]
    assert ma_profile.compare_with_paper(None, layer_rows, massive) == []
    assert paper_numbers("massive_activations", None) is None


def test_figure_labels_stay_legible():
    """Defects: a whitespace token's red bold label was blank in the attention maps; Fig. 3's
    integer layer axis showed 2.5 / 7.5 ticks; its title ran off the figure."""
    import matplotlib
    import pandas as pd

    from pipeline.figures import massive as figs
    from pipeline.figures.registry import token_label

    assert token_label(" ") == "\u2423" and token_label("  ") == "\u2423\u2423" and token_label("") == "\u2205"
    assert token_label("\n") == "\\n" and token_label(" the") == " the"
    rows = pd.DataFrame([{"layer": i, "layer_1based": i + 1, "top1": 10.0 * (i + 1), "top2": 5.0, "top3": 4.0,
                          "median": 1.0, "n_sequences": 2, "dataset": "wiki_summaries"} for i in range(8)])
    seen = {}
    orig = figs.save
    figs.save = lambda fig, out: seen.setdefault("fig", fig) and out
    try:
        matplotlib.use("Agg")
        figs.fig3_layers(rows, "a_model_with_a_long_name_to_fit", "unused.png")
    finally:
        figs.save = orig
    ax = seen["fig"].axes[0]
    seen["fig"].canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert "\n" in ax.get_title()  # two lines: model, then the setting
