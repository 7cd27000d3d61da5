"""Which massive activations are "the" massive activations: the steady ones (one definition,
``analysis.massive.is_steady``), used by the intervention layer, the attention token set and the
Fig. 1 layer.

Defect: on a real model whose steady ~1e5 dim appears at layer 3 after a transient ~3e3 dim in
layers 0-2, ``layer: auto`` edited only the transient dim, the attention stage took its token set
from the transient layer, and Fig. 1 was drawn there. The tiny model below is built to show it: a
transient +3000 in dim 3 at layer 0 (removed again by layer 1) and a steady +5000 in dim 7 from
layer 1 on.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from pipeline.analysis.massive import is_steady
from pipeline.stages import ma_attention, ma_intervene, ma_profile
from tests.helpers import make_ctx, planted, planted_in_mlp, run_stage

KW = dict(calib_data="wiki_summaries", calib_sequences=3, calib_seq_len=48, ppl_data=["wiki_summaries"],
          ppl_seq_len=48, ppl_windows=2, eval_suite=None, batch_size=2, conditions=["original", "set_zero"])


@contextmanager
def transient_then_steady(model, transient_position=0):
    with ExitStack() as stack:
        stack.enter_context(planted_in_mlp(model, 0, dim=3, value=3000.0, position=transient_position))
        stack.enter_context(planted_in_mlp(model, 1, dim=3, value=-3000.0, position=transient_position))
        stack.enter_context(planted(model, 1, dim=7, value=5000.0, position=0))
        yield


def test_the_definition():
    assert is_steady([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], 18)  # 11 of the 15 layers from 3
    assert not is_steady([0, 1, 2], 18)  # 3 of 18: transient
    assert not is_steady([3], 4) and is_steady([1, 2], 4) and not is_steady([], 4)


def test_intervention_edits_the_steady_dim_not_the_first_one(tmp_path):
    ctx = make_ctx(tmp_path)
    with transient_then_steady(ctx.model):
        out = run_stage("ma_intervene", ctx, **KW)
    assert out["layer"] == 1 and [s["dim"] for s in out["sites"]] == [7]
    assert "not steady, skipped: dim 3" in out["why"] and out["why"] in ma_intervene.format_summary(out)


def test_attention_token_set_is_the_steady_position(tmp_path):
    ctx = make_ctx(tmp_path)
    with transient_then_steady(ctx.model, transient_position=2):
        out = run_stage("ma_attention", ctx, prompt="Summer is warm. Winter is cold. The cat sat on the mat.",
                        layers=[2])
    assert out["massive_layer"] == 1 and [t["position"] for t in out["massive_tokens"]] == [0]
    summary = ma_attention.format_summary(out)
    assert "left out of S: 1 position(s): 2 " in summary and "queries" in summary


def test_fig1_is_drawn_where_the_steady_dim_appears(tmp_path):
    ctx = make_ctx(tmp_path)
    with transient_then_steady(ctx.model):
        out = run_stage("ma_profile", ctx, n_sequences=2, seq_len=32)
    steady = {m["dim"]: m["steady"] for m in out["massive"]}
    assert steady == {3: False, 7: True} and out["fig1_layer"] == 1
    assert "NOT massive" not in out["fig1_why"]
    assert "Fig. 1 layer: layer 1" in ma_profile.format_summary(out)


def test_peak_layer_is_searched_in_every_layer(tmp_path):
    """The steady dim's value keeps growing after the ratio rule stops passing (a median that
    grows faster): its peak is where |value| is largest, not the last layer that passed."""
    ctx = make_ctx(tmp_path)
    with planted(ctx.model, 1, dim=7, value=5000.0), planted(ctx.model, 3, dim=7, value=50000.0), \
            planted(ctx.model, 3, dim=slice(None), value=100.0, position=slice(None)):  # median of layer 3 -> ~100
        out = run_stage("ma_profile", ctx, n_sequences=2, seq_len=32)
    dim7 = next(m for m in out["massive"] if m["dim"] == 7)
    assert dim7["last_layer"] == 2 and dim7["peak_layer"] == 3 and dim7["peak_value_mean"] > 50000


def test_a_transient_dim_on_the_steady_token_does_not_move_the_massive_layer(tmp_path):
    """On a real model the first token holds a transient dim from layer 0 and the steady one from
    layer 3: the attention layers must follow the steady one."""
    ctx = make_ctx(tmp_path)
    with transient_then_steady(ctx.model, transient_position=0):
        out = run_stage("ma_attention", ctx, prompt="Summer is warm. Winter is cold. The cat sat on the mat.")
    assert out["massive_layer"] == 1 and [t["position"] for t in out["massive_tokens"]] == [0]
    assert out["layers"][0] == 2  # the layer after the massive layer
