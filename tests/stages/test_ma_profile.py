"""Stage ma_profile on tiny models: planted outliers are found where they were planted."""

import pytest

from pipeline.core.errors import PipelineError
from pipeline.figures import draw_experiment
from pipeline.stages import ma_profile
from tests.helpers import make_ctx, planted, run_stage

KW = dict(n_sequences=4, seq_len=32, batch_size=2, abs_threshold=100.0, rel_threshold=1000.0,
          max_hits=16, delimiters=[".", "\n"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_planted_outlier_found_at_its_layer_dim_and_token(tmp_path, arch):
    ctx = make_ctx(tmp_path, arch)
    with planted(ctx.model, layer_idx=1, dim=7, value=5000.0, position=0):
        out = run_stage("ma_profile", ctx, **KW)
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
    out = run_stage("ma_profile", make_ctx(tmp_path), **KW)
    assert out["massive"] == []
    assert "none found" in ma_profile.format_summary(out)


def test_stage_writes_tables_and_figures_redraw_from_csv(tmp_path):
    ctx = make_ctx(tmp_path)
    with planted(ctx.model, layer_idx=2, dim=3, value=-8000.0, position=0):
        out = run_stage("ma_profile", ctx, **KW)
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
    run_stage("ma_profile", ctx, **KW)
    assert len(ctx.results.read("ma_layer_stats")) == 4
    ctx.results.commit({})  # the figures read the committed record only
    figs = draw_experiment(ctx.out_dir)
    assert {p.name.split("_")[0] for p in figs} == {"fig3", "fig1"} and all(p.stat().st_size > 10_000 for p in figs)
    text = ma_profile.format_summary(out)
    assert "first_token" in text and "pos 0 (e.g. " in text  # the text only as an example of position 0
    first = out["massive"][0]["first_layer"]
    assert f"{first} ({first + 1})" in text  # both layer conventions


def test_fig1_layer_out_of_range_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="out of range"):
        run_stage("ma_profile", make_ctx(tmp_path), **{**KW, "fig1_layer": 99})


def test_figure_labels_stay_legible():
    """Defects: a whitespace token's red bold label was blank in the attention maps; Fig. 3's
    integer layer axis showed 2.5 / 7.5 ticks; its title ran off the figure."""
    import matplotlib
    import pandas as pd

    from pipeline.figures import massive_activations as figs
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
