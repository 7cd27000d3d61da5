"""Verdicts that know their noise: paired bootstrap intervals over the same windows / documents,
and rules that say "inconclusive" when the interval covers the boundary they test."""

import numpy as np
import pandas as pd
import pytest

from pipeline.report.intervals import combine, paired, side, want, within
from pipeline.report.rules import RULES


def _items(conditions: dict[str, np.ndarray], metric: str = "nll", data: str = "wiki", kl: dict | None = None):
    rows = [{"condition": c, "eval": "perplexity", "eval_data": data, "item": i, "metric": metric, "value": v, "n": 511}
            for c, values in conditions.items() for i, v in enumerate(values)]
    rows += [{"condition": c, "eval": "perplexity", "eval_data": data, "item": i, "metric": "kl", "value": v, "n": 511}
             for c, values in (kl or {}).items() for i, v in enumerate(values)]
    return pd.DataFrame(rows)


RNG = np.random.default_rng(1)
BASE = 2.8 + RNG.normal(0, 0.15, 8)  # 8 windows whose difficulty varies a lot (shared by every condition)


def test_paired_interval_of_a_noise_difference_covers_zero_and_of_a_real_one_does_not():
    noise = BASE + RNG.normal(0, 0.004, 8)  # what a harmless edit does: tiny, signless per window
    shifted = BASE + 0.02 + RNG.normal(0, 0.004, 8)  # a consistent +0.02 nats: small, but on every window
    items = _items({"a": BASE, "noise": noise, "shifted": shifted})
    e = paired(items, "a", "noise", "ppl")
    assert side(e) == "inconclusive" and e.low < 0 < e.high
    s = paired(items, "a", "shifted", "ppl")
    assert side(s) == "above" and s.low > 0
    # unpaired, the window-to-window spread (0.15 nats) would swamp the +0.02: pairing is what resolves it
    assert s.high - s.low < 0.25 * np.exp(2.8) * 0.15
    assert paired(items, "a", "shifted", "ppl", ratio=True).value == pytest.approx(np.exp(shifted.mean() - BASE.mean()))


def test_w8a8_rule_gives_inconclusive_within_noise_and_a_verdict_for_a_clear_effect():
    rule = RULES["super_activation_aware_w8a8"]
    table = pd.DataFrame({"condition": ["fp", "naive", "super_activation_aware"], "ppl_wiki": [16.8, 17.2, 17.1]})
    within_noise = _items({"naive": BASE + 0.02, "super_activation_aware": BASE + 0.02 + RNG.normal(0, 0.004, 8)})
    verdict, why = rule({"sw_actquant_table": table, "sw_actquant_items": within_noise})
    assert verdict == "inconclusive" and "[95%" in why
    better = _items({"naive": BASE + 0.05, "super_activation_aware": BASE + 0.01 + RNG.normal(0, 0.002, 8)},
                    kl={"naive": np.full(8, 0.04), "super_activation_aware": np.full(8, 0.02)})
    assert rule({"sw_actquant_table": table, "sw_actquant_items": better})[0] == "holds"
    worse = _items({"naive": BASE + 0.01, "super_activation_aware": BASE + 0.05 + RNG.normal(0, 0.002, 8)})
    assert rule({"sw_actquant_table": table, "sw_actquant_items": worse})[0] == "does not hold"
    assert rule({"sw_actquant_table": table})[0] == "not judged"  # no per-window values: no verdict


def test_accuracy_is_paired_per_document_within_each_task():
    docs = RNG.random((2, 200)) < 0.6  # two tasks x 200 documents, ~60% right
    flip = docs.copy()
    for t in range(2):  # 6 documents per task change, 3 each way: noise
        right, wrong = np.flatnonzero(docs[t])[:3], np.flatnonzero(~docs[t])[:3]
        flip[t, right], flip[t, wrong] = False, True
    rows = [{"condition": c, "eval": "zero_shot", "eval_data": f"t{t}", "item": i, "metric": "acc",
             "value": float(v[t, i]), "n": 1}
            for c, v in (("a", docs), ("b", flip)) for t in range(2) for i in range(200)]
    e = paired(pd.DataFrame(rows), "a", "b", "acc")
    assert side(e) == "inconclusive" and e.value == 0.0
    worse = docs.copy()
    worse[:, np.flatnonzero(docs[0])[:30]] = False  # 30 right answers lost in task 0 (and where task 1 was right)
    rows_w = [{**r, "condition": "w", "value": float(worse[int(r["eval_data"][1]), r["item"]])}
              for r in rows if r["condition"] == "a"]
    w = paired(pd.DataFrame(rows + rows_w), "a", "w", "acc")
    assert side(w) == "below"


def test_three_way_outcomes():
    assert within(paired(_items({"a": BASE, "b": BASE}), "a", "b", "ppl", ratio=True), 0.95, 1.05) == "inside"
    assert [want(s, "above") for s in ("above", "below", "inconclusive")] == ["yes", "no", "inconclusive"]
    assert combine(["yes", "yes"], "yes") == "holds" and combine(["yes", "no"], "yes") == "partly"
    assert combine(["no", "no"], "yes") == "does not hold" and combine(["inconclusive"] * 2, "yes") == "inconclusive"
    assert combine(["no", "inconclusive"], "yes") == "inconclusive"


def test_a_per_model_rule_judges_each_model_on_its_own_windows():
    """Two models in one folder (SmolLM2 and Qwen2.5 in Table 3): pooled, the bootstrap mixed their
    windows; judged per model, each gets its verdict and the artefact says which."""
    from pipeline.report.registry import judge

    def model_rows(model, items, ppl):
        table = pd.DataFrame({"model": model, "condition": ["fp", "naive", "super_activation_aware"], "ppl_wiki": ppl})
        return table, items.assign(model=model)

    a_table, a_items = model_rows("a", _items({"naive": BASE + 0.05, "super_activation_aware": BASE + 0.01
                                                + RNG.normal(0, 0.002, 8)}), [16.8, 17.6, 16.9])
    b_table, b_items = model_rows("b", _items({"naive": BASE + 0.3, "super_activation_aware": BASE + 0.3
                                                + RNG.normal(0, 0.004, 8)}), [16.8, 22.7, 22.7])
    tables = {"sw_actquant_table": pd.concat([a_table, b_table]), "sw_actquant_items": pd.concat([a_items, b_items])}
    verdict, why = judge("super_activation_aware_w8a8", tables, "sw_actquant_table")
    assert verdict == "partly" and why.startswith("a: holds (") and "; b: inconclusive (" in why
    # one model: the rule as written, no prefix
    only_a = {k: t[t["model"] == "a"] for k, t in tables.items()}
    alone = judge("super_activation_aware_w8a8", only_a, "sw_actquant_table")
    assert alone[0] == "holds" and not alone[1].startswith("a: ")


def test_a_model_without_per_window_values_is_not_judged_for_that_reason():
    from pipeline.report.registry import judge

    table = pd.DataFrame({"model": ["a"] * 3 + ["old"] * 3, "condition": ["fp", "naive", "super_activation_aware"] * 2,
                          "ppl_wiki": [16.8, 17.6, 16.9] * 2})
    items = _items({"naive": BASE + 0.05, "super_activation_aware": BASE + 0.01 + RNG.normal(0, 0.002, 8)})
    items = items.assign(model="a")
    verdict, why = judge("super_activation_aware_w8a8", {"sw_actquant_table": table, "sw_actquant_items": items},
                         "sw_actquant_table")
    assert verdict == "holds" and "old: not judged (no per-window" in why
