"""Streaming statistics against a brute-force computation over stored hidden states."""

import math

import pytest
import torch

from pipeline.analysis.massive import LayerProfile
from pipeline.hooks.positions import token_types


def _brute(hs, abs_t, rel_t):
    """hs: list over sequences of (L, T, D) tensors -> per-layer mean top3/median and hits."""
    n_layers = hs[0].shape[0]
    tops, meds, hits = torch.zeros(n_layers, 3, dtype=torch.float64), torch.zeros(n_layers, dtype=torch.float64), {}
    for _s, h in enumerate(hs):
        for lay in range(n_layers):
            a = h[lay].abs().double().flatten()
            tops[lay] += a.sort(descending=True).values[:3]
            med = a.sort().values[(a.numel() - 1) // 2]  # lower median
            meds[lay] += med
            for idx in torch.nonzero((h[lay].abs() > abs_t) & (h[lay].abs() > rel_t * med)):
                t, d = idx.tolist()
                hits.setdefault((lay, d, t), []).append(float(h[lay, t, d]))
    return tops / len(hs), meds / len(hs), hits


def test_layer_profile_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    n_layers, T, D = 3, 10, 16
    hs = [torch.randn(n_layers, T, D, generator=g) for _ in range(5)]
    for s, h in enumerate(hs):  # plant: layer>=1, dim 5, token 0 ; layer 2 dim 9 token 4 (every other seq)
        h[1:, 0, 5] += 2000.0 + s
        if s % 2 == 0:
            h[2, 4, 9] -= 5000.0
    prof = LayerProfile(n_layers, abs_threshold=100, rel_threshold=1000, max_hits=8)
    ids = torch.zeros(1, T, dtype=torch.long)
    for s in range(0, 5):
        prof.begin_batch(token_types(ids, lambda t: False), [["x"] * T])
        for lay in range(n_layers):
            prof.observe(lay, hs[s][lay][None])
        prof.end_batch()
    tops, meds, hits = _brute(hs, 100, 1000)
    rows = prof.layer_rows()
    for lay in range(n_layers):
        assert math.isclose(rows[lay]["top1"], float(tops[lay, 0]), rel_tol=1e-6)
        assert math.isclose(rows[lay]["top3"], float(tops[lay, 2]), rel_tol=1e-6)
        assert math.isclose(rows[lay]["median"], float(meds[lay]), rel_tol=1e-6)
    acts = {(r["layer"], r["dim"]): r for r in prof.activation_rows()}
    assert set(acts) == {(lay, d) for (lay, d, _t) in hits}
    r = acts[(1, 5)]
    vals = torch.tensor(hits[(1, 5, 0)], dtype=torch.float64)
    assert r["n_hits"] == 5 and r["token_type"] == "first_token"
    assert math.isclose(r["value_mean"], float(vals.mean()), rel_tol=1e-9)
    assert math.isclose(r["value_std"], float(vals.std(unbiased=False)), rel_tol=1e-6)
    assert acts[(2, 9)]["n_hits"] == 3 and acts[(2, 9)]["frac_sequences"] == 3 / 5
    assert rows[0]["n_massive"] == 0 and not rows[0]["truncated"]


def test_batched_equals_unbatched():
    g = torch.Generator().manual_seed(2)
    hs = torch.randn(4, 2, 12, 8, generator=g) * 3
    hs[:, 1, 0, 3] += 500.0
    ids = torch.zeros(4, 12, dtype=torch.long)
    types = token_types(ids, lambda t: False)

    def run(bs):
        p = LayerProfile(2, abs_threshold=100, rel_threshold=10, max_hits=4)
        for s in range(0, 4, bs):
            p.begin_batch(types[s:s + bs], [["x"] * 12] * bs)
            for lay in range(2):
                p.observe(lay, hs[s:s + bs, lay])
            p.end_batch()
        return p.layer_rows(), p.activation_rows()

    assert run(1) == run(2)


def test_truncation_is_reported():
    h = torch.full((1, 4, 4), 1e4)
    h[0, 0, 0] = 0.0
    prof = LayerProfile(1, abs_threshold=1, rel_threshold=0, max_hits=3)
    prof.begin_batch([["first_token", "other", "other", "other"]], [["a"] * 4])
    prof.observe(0, h)
    prof.end_batch()
    assert prof.layer_rows()[0]["truncated"]


def test_token_types_first_and_first_delimiter():
    ids = torch.tensor([[5, 7, 1, 7, 1], [1, 2, 3, 4, 5]])
    types = token_types(ids, lambda t: t == 1)
    assert types[0] == ["first_token", "other", "first_delimiter", "other", "other"]
    assert types[1] == ["first_token", "other", "other", "other", "other"]  # position 0 is never a delimiter


def test_lower_median_equals_torch_median():
    from pipeline.analysis.massive import lower_median

    g = torch.Generator().manual_seed(3)
    for shape in [(1, 1), (1, 2), (3, 7), (2, 1000), (2, 4097)]:
        a = torch.randn(*shape, generator=g).abs() * 10 ** torch.randint(-3, 4, shape, generator=g)
        assert torch.equal(lower_median(a), a.median(dim=1).values), shape
    ties = torch.tensor([[0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert torch.equal(lower_median(ties), ties.median(dim=1).values)
    big = torch.zeros(1, 10)
    big[0, :6] = 1e4  # the median itself is a huge value
    assert torch.equal(lower_median(big), big.median(dim=1).values)
    nan = torch.tensor([[1.0, float("nan"), 2.0]])
    assert torch.equal(lower_median(nan).isnan(), nan.median(dim=1).values.isnan())
    half = torch.rand(2, 33, generator=g).to(torch.bfloat16)
    assert torch.equal(lower_median(half), half.median(dim=1).values)


def test_one_nan_neither_hides_a_massive_activation_nor_passes_silently():
    """Defect: one NaN made the layer's median NaN (max(100, 1000 * nan) is 100 and topk puts the
    NaN first), so a planted 5,000 beside it gave zero hits and no warning."""
    h = torch.randn(1, 8, 16) * 0.5
    h[0, 0, 3] = 5000.0
    h[0, 5, 7] = float("nan")
    h[0, 6, 2] = float("inf")
    prof = LayerProfile(1)
    prof.begin_batch([["other"] * 8], [["x"] * 8])
    prof.observe(0, h)
    prof.end_batch()
    hits = prof.activation_rows()
    assert [(r["dim"], r["value_mean"]) for r in hits] == [(3, 5000.0)]
    row = prof.layer_rows()[0]
    assert row["n_nonfinite"] == 2 and row["top1"] == 5000.0
    finite = h[torch.isfinite(h)].abs()
    assert row["median"] == pytest.approx(float(finite.median()))
