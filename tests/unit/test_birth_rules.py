"""Paper C Fig. 4's rule (global bigrams before in-context learning): a verdict is only as strong as
its noise (an evaluation interval, or the spread over seeds) and needs curves that finished their
drop; half-drop steps are interpolated between evaluations."""

import numpy as np
import pandas as pd
import pytest

from pipeline.report.intervals import t95
from pipeline.report.rules import RULES
from pipeline.report.rules.birth import half_drop_step

STEPS = np.arange(0, 1005, 5)   # long enough that every loss reaches its floor


def run(label, bigram_half, head_half, seed=0, acc_end=0.95):
    """A run whose losses fall from 4 to 2 as exp(-step/tau), halving at the given steps."""
    def loss(half):
        return 2 + 2 * np.exp(-STEPS * np.log(2) / half)
    return pd.DataFrame({"label": label, "seed": seed, "step": STEPS, "loss_bigram": loss(bigram_half),
                         "loss_head": loss(head_half), "acc_end": acc_end})


def verdict(*runs):
    return RULES["global_before_in_context"]({"birth_curve": pd.concat(runs)})


def test_half_drop_step_is_interpolated_between_evaluations():
    g = pd.DataFrame({"step": [0, 10, 20, 30, 40, 50, 60, 70], "x": [4.0, 3.5, 2.5, 2.0, 2.0, 2.0, 2.0, 2.0]})
    assert half_drop_step(g, "x") == pytest.approx(15.0)  # target 3.0: halfway from 3.5 (10) to 2.5 (20)
    assert half_drop_step(g.assign(x=4.0), "x") == 0.0   # no drop at all: reached at the start
    assert half_drop_step(pd.DataFrame({"step": [0, 10, 20, 30, 40, 50, 60],
                                        "x": [4.0, 5, 5, 5, 5, 5, 5]}), "x") == 0.0


def test_global_first_beyond_an_evaluation_interval_holds_and_within_it_is_inconclusive():
    assert verdict(run("K=5", 10, 60), run("K=3", 12, 50))[0] == "holds"
    v, why = verdict(run("K=5", 10, 60), run("K=3", 30, 33))  # K=3: 3 steps apart, evaluations every 5
    assert v == "partly" and "1 seed, +- one evaluation interval (5 steps)" in why
    assert verdict(run("K=5", 30, 27), run("K=3", 30, 33))[0] == "inconclusive"
    assert verdict(run("K=5", 60, 10), run("K=3", 50, 12))[0] == "does not hold"
    assert verdict(run("K=5", 10, 60), run("K=3", 50, 12))[0] == "partly"


def test_curves_that_have_not_finished_their_drop_are_not_judged():
    v, why = verdict(run("K=5", 10, 60, acc_end=0.3), run("K=3", 10, 60, acc_end=0.89))
    assert v == "inconclusive" and "K=5: bigram at 10, in-context at 60" in why
    assert "not converged: acc_end ends at 0.30 < 0.9" in why


def test_seeds_give_a_t_interval_of_the_lead():
    agree = [run("K=5", 10, h, seed=s) for s, h in enumerate((58, 60, 62))]
    v, why = verdict(*agree)
    assert v == "holds" and "3 seeds, t-interval" in why and "in-context at 58, 60, 62" in why
    spread = [run("K=5", 10, h, seed=s) for s, h in enumerate((4, 60, 30))]  # leads -6, +50, +20
    assert verdict(*spread)[0] == "inconclusive"  # mean +21, half-width 4.30 * 28 / sqrt(3) = 70
    assert t95(2) == pytest.approx(4.303) and t95(40) == pytest.approx(2.228)
