"""One BOS rule for every text of a run, following the model's tokenizer by default.

Defects: every offline dataset said ``bos: never`` and Fig. 1 / the attention stage always
tokenized without special tokens, so a model whose tokenizer adds a BOS (perplexity 156.5 without
it, 26.1 with it, for a real one) was measured off its training distribution while lm-eval gave
it its BOS; and ``data.bos=every`` did not reach a stage's calibration or perplexity data.
"""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline.analysis.profile import layer_landscape
from pipeline.core.catalog import Catalog
from pipeline.data import text as data
from pipeline.data.text import build_source, encode_prompt, token_windows, tokenizer_adds_bos
from tests.helpers import TEXT, make_ctx, run_stage, tiny

DOCS = {"kind": "text", "text": TEXT, "joiner": "\n\n"}


def catalog(bos: str) -> Catalog:
    return Catalog({"data": {"calib": {**DOCS, "name": "calib", "bos": bos},
                             "evalset": {**DOCS, "name": "evalset", "bos": bos}}})


def test_the_rule_is_read_off_the_tokenizer():
    (_, plain), (_, adds) = tiny("llama"), tiny("llama", add_bos=True)
    assert not tokenizer_adds_bos(plain) and tokenizer_adds_bos(adds)
    src = build_source({**DOCS, "name": "t", "bos": "auto"})
    w_adds = token_windows(adds, src, seq_len=16, n_windows=3, bos="auto")
    w_plain = token_windows(plain, src, seq_len=16, n_windows=3, bos="auto")
    assert (w_adds[:, 0] == adds.bos_token_id).all() and torch.equal(w_adds[0, 1:], w_plain[0, :15])
    assert not (w_plain == plain.bos_token_id).any()
    assert encode_prompt(adds, "Summer is warm.")[0, 0] == adds.bos_token_id
    assert encode_prompt(plain, "Summer is warm.")[0, 0] != plain.bos_token_id


def test_offline_datasets_follow_the_tokenizer_and_paper_protocols_keep_theirs():
    cat = Catalog.from_files()
    for name in ("wiki_summaries", "shakespeare", "austen"):
        assert cat.get("data", name)["bos"] == "auto", name
    assert cat.get("data", "wikitext2")["bos"] == "never" and cat.get("data", "c4")["bos"] == "first"


def test_dropping_a_bos_the_tokenizer_adds_is_announced(caplog):
    _, adds = tiny("llama", add_bos=True)
    data._WARNED.clear()
    src = build_source({**DOCS, "name": "protocol_set", "bos": "never"})
    with caplog.at_level(logging.WARNING):
        w = token_windows(adds, src, seq_len=16, n_windows=2, bos="never")
    assert not (w == adds.bos_token_id).any()  # the explicit rule is kept ...
    assert "drops the BOS token" in caplog.text and "protocol_set" in caplog.text  # ... and said
    caplog.clear()
    _, plain = tiny("llama")
    with caplog.at_level(logging.WARNING):
        token_windows(plain, build_source({**DOCS, "name": "other", "bos": "never"}), seq_len=16, n_windows=2)
    assert "drops the BOS" not in caplog.text  # nothing to drop: no warning


def test_run_bos_reaches_calibration_evaluation_prompts_and_lm_eval(tmp_path):
    """run.bos=every on datasets that say never: every text of the run starts with BOS."""
    ctx = make_ctx(tmp_path, run_bos="every", catalog=catalog("never"))
    bos = ctx.tokenizer.bos_token_id
    assert (ctx.windows(16, 2)[:, 0] == bos).all()
    assert (ctx.calibration_windows("calib", "eval", 16, 2)[:, 0] == bos).all()
    assert (ctx.eval_windows(["evalset"], 16, 2)["evalset"][:, 0] == bos).all()
    assert ctx.encode("Summer is warm.")[0, 0] == bos and ctx.adds_bos()
    plain = make_ctx(tmp_path, catalog=catalog("never"))  # no override: each dataset's own rule
    assert not (plain.calibration_windows("calib", "eval", 16, 2) == bos).any() and not plain.adds_bos()


def test_auto_gives_a_bos_model_its_bos_everywhere(tmp_path):
    ctx = make_ctx(tmp_path, arch="gemma3", add_bos=True, data_bos="auto", catalog=catalog("auto"))
    bos = ctx.tokenizer.bos_token_id
    assert (ctx.windows(16, 2)[:, 0] == bos).all()
    assert (ctx.eval_windows(["evalset"], 16, 2)["evalset"][:, 0] == bos).all()
    assert ctx.encode("Summer is warm.")[0, 0] == bos and ctx.adds_bos()


def test_zero_shot_is_told_the_runs_rule(tmp_path, monkeypatch):
    from pipeline.evaluation import conditions

    seen = []

    def fake_zero_shot(model, tok, suite, **kw):
        seen.append(kw["add_bos"])
        return [{"task": "piqa", "metric": "acc", "value": 0.5, "stderr": 0.01, "n": 2}]

    monkeypatch.setattr(conditions, "zero_shot", fake_zero_shot)
    monkeypatch.setattr(conditions, "load_suite", lambda name, catalog: {"tasks": {"piqa": {}}})
    for run_bos, expected in ((None, True), ("never", False)):
        ctx = make_ctx(tmp_path / str(run_bos), arch="gemma3", add_bos=True, data_bos="auto", run_bos=run_bos)
        conditions.evaluate_conditions(ctx, "test", {"original": lambda: __import__("contextlib").nullcontext()},
                                       ppl_sets={}, eval_suite="x", zero_shot_limit=2)
        assert seen[-1] is expected


@pytest.mark.parametrize("stage", ["ma_profile", "ma_attention"])
def test_prompt_stages_give_a_bos_model_its_bos(tmp_path, stage):

    ctx = make_ctx(tmp_path, arch="gemma3", add_bos=True, data_bos="auto")
    if stage == "ma_profile":
        rows = layer_landscape(ctx, "Summer is warm.", 0)
        first = next(r["token"] for r in rows if r["position"] == 0)
    else:
        out = run_stage("ma_attention", ctx, prompt="Summer is warm. Winter is cold.", layers=[1])
        first = out["tokens"][0]
    assert first == "<bos>"
