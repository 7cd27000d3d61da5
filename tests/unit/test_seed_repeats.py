"""Seed repeats of a training artefact (make record-seeds): one line per run label in the figures
(the mean, with the seeds' range as a band; the curves interleaved by step drew a zigzag), and the
report's final-value table tells the seeds apart."""

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import pipeline.figures.birth as birth_figures  # noqa: E402
from pipeline.report.artefacts import ARTEFACTS  # noqa: E402
from pipeline.report.build import shown  # noqa: E402


def two_seeds() -> pd.DataFrame:
    steps = np.arange(0, 50, 10)
    return pd.concat([pd.DataFrame({"label": "K=5", "seed": s, "step": steps, "acc_end": steps / 100 + 0.1 * s,
                                    "loss_bigram": 4 - steps / 50, "loss_head": 4.0, "ff1_loss": 1.0,
                                    "acc_end_test": 0.2}) for s in (0, 1)])


def test_a_curve_over_seeds_is_one_line_at_the_mean_with_a_band(monkeypatch):
    monkeypatch.setattr(birth_figures, "save", lambda fig, out: fig)
    fig = birth_figures._curves(two_seeds(), [("acc_end", "acc_end")], None, "t")
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), np.arange(0, 50, 10) / 100 + 0.05)
    assert "mean of 2 seeds" in line.get_label() and len(ax.collections) == 1


def test_the_final_values_of_each_seed_are_told_apart():
    fig4 = next(a for a in ARTEFACTS if a.experiment == "birth_fig4")
    table, what = shown(fig4, two_seeds())
    assert list(table["seed"]) == [0, 1] and set(table["step"]) == {40} and "2 rows" in what
