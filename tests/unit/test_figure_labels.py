"""Paper B's Fig. 3 labels: one per super weight, stacked per layer; a layer with many (Qwen2.5's
layer 21: nine rows fed by one input channel) gets one summary label, not a tower off the axes."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
from matplotlib import pyplot as plt

from pipeline.figures.super_weight import _mark_super_weights


def _labels(directory: pd.DataFrame) -> list[str]:
    df = pd.DataFrame({"layer": range(6), "in_max": [1.0, 900.0, 2.0, 3.0, -400.0, 1.0]})
    fig, ax = plt.subplots()
    _mark_super_weights(ax, df, "in_max", directory)
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    return texts


def test_one_label_per_weight_and_a_summary_for_a_crowded_layer():
    rows = [{"layer": 1, "row": 7, "col": 3, "role": "creates", "iteration": 0},
            {"layer": 1, "row": 7, "col": 9, "role": "creates", "iteration": 2}]
    rows += [{"layer": 4, "row": r, "col": 5, "role": "cancels", "iteration": i + 3}
             for i, r in enumerate([7, 11, 2, 40, 8])]
    texts = _labels(pd.DataFrame(rows))
    assert texts[:2] == ["[7, 3] creates", "[7, 9] creates, found at iteration 2"]
    assert len(texts) == 3 and texts[2].startswith("5 weights: rows 7, 11, 2, 40, ...; col 5")


def test_labels_stay_inside_the_axes():
    rows = [{"layer": 1, "row": r, "col": 3, "role": "creates", "iteration": i} for i, r in enumerate([1, 2, 3])]
    fig, ax = plt.subplots()
    df = pd.DataFrame({"layer": range(6), "in_max": [1.0, 900.0, 2.0, 3.0, -400.0, 1.0]})
    _mark_super_weights(ax, df, "in_max", pd.DataFrame(rows))
    offsets = [t.xyann[1] for t in ax.texts]
    plt.close(fig)
    assert all(o < 0 for o in offsets)  # the peak is at the top: its labels stack downwards
