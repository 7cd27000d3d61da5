"""Paper C's models, probes and stage: probes on hand-built models whose answer is known, the
freezing rules, and a short training run whose model loads like any other."""

import math

import numpy as np
import pytest
import torch

from pipeline.analysis.induction import batch_metrics, first_crossing, memory_probes
from pipeline.config.training import TrainConfig
from pipeline.data.bigram import BigramTask, shakespeare_stats
from pipeline.models.birth import SIMPLIFIED_FROZEN, BirthConfig, BirthForCausalLM
from pipeline.train.data import BigramBatches
from pipeline.train.loop import train
from tests.helpers import run_stage


def hand_built(vocab=8, dim=64, positions=16, ffn="none") -> BirthForCausalLM:
    """Orthonormal token and position embeddings and weights that implement each memory exactly:
    W_K1 p_s = p_{s+1} (previous-token recall), W_K2 W_O1 W_V1 = I (trigger recall), W_O2 W_V2 = I
    and W_U = E^T (output recall)."""
    torch.manual_seed(0)
    m = BirthForCausalLM(BirthConfig(vocab_size=vocab, dim=dim, n_positions=positions, final_ffn=ffn, frozen=[]))
    basis = torch.linalg.qr(torch.randn(dim, dim))[0]
    e, p = basis[:, :vocab].T, basis[:, vocab:vocab + positions].T  # rows: orthonormal vectors
    with torch.no_grad():
        m.tok_embeddings.weight.copy_(e)
        m.pe.copy_(p)
        m.layers[0].attention.wk.weight.copy_(sum(torch.outer(p[s + 1], p[s]) for s in range(positions - 1)))
        for w in (m.layers[0].attention.wv, m.layers[0].attention.wo, m.layers[1].attention.wk,
                  m.layers[1].attention.wv, m.layers[1].attention.wo):
            w.weight.copy_(torch.eye(dim))
        m.output.weight.copy_(e)
    return m


def test_memory_probes_on_a_model_that_implements_every_memory():
    m = hand_built()
    probes = memory_probes(m, triggers=np.array([1, 3]), n_train_tokens=8)
    assert probes["wk0"] == probes["wk0_64"] == probes["wk1"] == probes["wo1"] == 1.0
    with torch.no_grad():  # break the output memory for half the tokens: wo1 drops to 1/2
        m.output.weight[:4] = -m.output.weight[:4]
        m.layers[0].attention.wk.weight.zero_()  # no positional memory: every score ties (argmax 0)
    broken = memory_probes(m, triggers=None, n_train_tokens=8)
    assert broken["wo1"] == 0.5 and broken["wk0"] == pytest.approx(1 / 15)


def test_ff1_loss_is_zero_when_the_ffn_stores_the_bigram():
    m = hand_built(vocab=8, dim=12, positions=4, ffn="linear")
    bigram = np.random.default_rng(0).dirichlet(np.ones(8), size=8)
    with torch.no_grad():  # w_E(j) = e_j, W_U = E^T, W_F's column j = log pi_b(.|j): softmax = pi_b
        m.tok_embeddings.weight.copy_(torch.eye(12)[:8])
        m.output.weight.copy_(torch.eye(12)[:8])
        w_f = torch.zeros(12, 12)
        w_f[:8, :8] = torch.log(torch.as_tensor(bigram, dtype=torch.float32)).T
        m.layers[-1].ff.weight.copy_(w_f)
    assert memory_probes(m, triggers=None, n_train_tokens=8, bigram=bigram)["ff1_loss"] == pytest.approx(0, abs=1e-5)
    assert memory_probes(m, triggers=np.array([0]), n_train_tokens=8, bigram=bigram[::-1].copy())["ff1_loss"] > 0.1


def test_batch_metrics_on_hand_built_attention():
    x = torch.tensor([[5, 1, 2, 6, 1, 2, 7, 1]])       # trigger 1 -> output 2
    y = torch.tensor([[1, 2, 6, 1, 2, 7, 1, 2]])
    c = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 3]])
    t = x.shape[1]
    prev = torch.zeros(1, 1, t, t)
    for q in range(t):
        prev[0, 0, q, max(q - 1, 0)] = 1.0              # layer 1: the previous token
    induct = torch.zeros(1, 1, t, t)
    for q in range(t):                                  # layer 2: the token after an earlier copy of x[q]
        hits = [s for s in range(1, q + 1) if x[0, s - 1] == x[0, q]]
        induct[0, 0, q, hits[-1] if hits else 0] = 1.0
    logits = torch.nn.functional.one_hot(y, 8).float() * 10
    out = batch_metrics(logits, (prev, induct), x, y, c)
    assert out["acc_end"] == out["acc_tot"] == 1.0 and out["score_acc"] == 1.0 and out["score2_acc"] == 1.0
    assert out["loss_head"] < 1e-3
    # the official logs we lacked: layer 2 attends to the predicted token, layer 1 at that key looks back
    assert out["pred_attended_acc"] == 1.0 and out["score_cond_acc"] == 1.0 and out["repeat_frac"] == 0.0
    wrong = batch_metrics(-logits, (induct, prev), x, y, c)
    assert wrong["acc_end"] == 0.0 and wrong["score2_acc"] == 0.0
    assert wrong["pred_attended_acc"] < 1.0 and wrong["score_cond_acc"] < 1.0
    assert first_crossing([{"step": 0, "a": 0.2}, {"step": 5, "a": 0.6}], "a", 0.5) == 5


def test_simplified_model_trains_only_wk1_wk2_wo2_and_freeze_until_keeps_them_frozen(tmp_path):
    stats = shakespeare_stats()
    m = BirthForCausalLM(BirthConfig(vocab_size=65, dim=32, n_positions=32,
                                     frozen=[*SIMPLIFIED_FROZEN, "tok_embeddings", "output"]))
    assert sorted(n for n, p in m.named_parameters() if p.requires_grad) == [
        "layers.0.attention.wk.weight", "layers.1.attention.wk.weight", "layers.1.attention.wo.weight"]
    frozen_before = {n: p.detach().clone() for n, p in m.named_parameters()}
    source = BigramBatches(stats, BigramTask(k=3, seq_len=32), micro_batch=16, loss_head_only=True)
    cfg = TrainConfig(steps=6, optimizer="sgd", lr=0.5, min_lr=None, warmup_steps=0, grad_clip=0, eval_every=3,
                      ckpt_every=3, freeze_until=["4:layers.1.attention.wo"], eval_at_start=True)
    seen = {}

    def on_eval(step):
        seen[step] = m.layers[1].attention.wo.weight.detach().clone()
        return {"probe": 1.0}

    hist = train(m, source.batch, cfg, tmp_path / "ckpt", device=torch.device("cpu"), seed=0, on_eval=on_eval)
    assert hist[0] == {"step": 0, "probe": 1.0}  # the initial model is evaluated
    after = dict(m.named_parameters())
    for n in ("layers.0.attention.wv.weight", "layers.0.attention.wo.weight", "tok_embeddings.weight"):
        assert torch.equal(after[n], frozen_before[n]), n  # never trained, before or after step 4
        assert not after[n].requires_grad, n  # and no gradient is computed for it
    assert torch.equal(seen[3], frozen_before["layers.1.attention.wo.weight"])  # held back until step 4
    assert not torch.equal(after["layers.1.attention.wo.weight"], seen[3])
    assert not torch.equal(after["layers.0.attention.wk.weight"], frozen_before["layers.0.attention.wk.weight"])


def test_start_token_batches():
    stats = shakespeare_stats()
    src = BigramBatches(stats, BigramTask(k=2, seq_len=16), micro_batch=4, bos_id=65)
    b = src.batch("train", 0)
    x, y, c = src.sample("train", 0)
    assert torch.equal(b["input_ids"][:, 0], torch.full((4,), 65)) and torch.equal(b["input_ids"][:, 1:], x)
    assert (b["targets"][:, 0] == -100).all() and torch.equal(b["targets"][:, 1:], y)
    head = BigramBatches(stats, BigramTask(k=2, seq_len=16), micro_batch=4, loss_head_only=True).batch("train", 0)
    assert torch.equal(head["targets"] != -100, c >= 2)


def test_save_and_reload_keeps_the_fixed_random_positions(tmp_path):
    m = BirthForCausalLM(BirthConfig(vocab_size=65, dim=16, n_positions=20, attn_bias=True))
    m.save_pretrained(tmp_path)
    again = BirthForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.pe, m.pe)
    ids = torch.randint(0, 65, (2, 20))
    out = m(ids, output_attentions=True)
    assert torch.allclose(again(ids).logits, out.logits, atol=1e-5)  # fused kernel vs explicit softmax
    a = out.attentions[0]  # the k'/v' slot: column 0, seen by every query; keys <= t otherwise
    assert a.shape[-1] == 21 and (a[..., 0] > 0).all() and a[0, 0, 3, 5:].sum() == 0
    assert math.isclose(float(a[0, 0, 3].sum()), 1.0, rel_tol=1e-5)


def test_stage_writes_curves_and_maps_and_the_model_loads_like_any_other(tmp_path):
    from pipeline.context import Context
    from pipeline.core.catalog import Catalog
    from pipeline.core.loggers import Logger
    from pipeline.core.results import ResultsWriter
    from pipeline.data.bigram import char_tokenizer
    from pipeline.data.text import build_source
    from pipeline.models.arch import get_arch
    from pipeline.models.load import load_model
    from pipeline.stages import birth_train

    stats = shakespeare_stats()
    tok = char_tokenizer(stats.chars, bos=True)
    model = BirthForCausalLM(BirthConfig(vocab_size=66, dim=16, n_positions=33, attn_bias=True,
                                         frozen=[*SIMPLIFIED_FROZEN, "tok_embeddings", "output"]))
    data = {"name": "shakespeare", "kind": "text", "text": "To be, or not to be. " * 20, "bos": "never"}

    def ctx(sub, m, t):
        results = ResultsWriter(tmp_path / sub, "birth", model="birth", revision=None, dataset="shakespeare", seed=0,
                                device="cpu")
        return Context(model=m, tokenizer=t, arch=get_arch(m), device=torch.device("cpu"), model_name="birth",
                       paper_key=None, data_cfg=data, source=build_source(data), results=results, logger=Logger(),
                       experiment="birth", seed=0, catalog=Catalog({"data": {"shakespeare": data}}))

    c = ctx("r", model, tok)
    out = run_stage("birth_train", c, steps=4, micro_batch=4, block_size=32, eval_every=2, ckpt_every=2, bos=True, k=2,
                    test_sequences=4, attention_positions=6, checkpoint_dir=str(tmp_path / "ckpt"), label="tiny")
    curve = c.results.read("birth_curve")
    assert list(curve["step"]) == [0, 2, 4] and set(curve["label"]) == {"tiny"}
    for col in ("acc_end", "wo1", "wk1", "wk0", "wk0_64", "acc_end_test", "L0_start_share", "L0_kprime_share",
                "ratio_max"):
        assert curve[col].notna().all(), col
    maps = c.results.read("birth_attention")
    assert len(maps) == 2 * 21 and maps.groupby(["layer", "query"])["weight"].sum().lt(1 + 1e-5).all()
    assert "first step >= 0.5" in birth_train.format_summary(out)
    loaded, ltok, _ = load_model({"name": "b", "source": "local", "path": out["checkpoint"], "dtype": "float32",
                                  "device": "cpu"})
    assert torch.equal(loaded.pe, model.pe) and ltok.decode(ltok("to be").input_ids) == "to be"
    prof = run_stage("ma_profile", ctx("p", loaded, ltok), n_sequences=2, seq_len=16)
    assert len(prof["layer_rows"]) == 2


def test_attention_probes_report_the_head_that_does_the_job():
    """With several heads (the full model) the previous-token probe reads the best head: here
    head 2 of 3 attends to t - 1 and the others to position 0."""
    x = torch.tensor([[5, 1, 2, 6, 1, 2, 7, 1]])
    y = torch.tensor([[1, 2, 6, 1, 2, 7, 1, 2]])
    c = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 3]])
    t = x.shape[1]
    att = torch.zeros(1, 3, t, t)
    att[0, :, :, 0] = 1.0
    att[0, 2] = 0
    for q in range(t):
        att[0, 2, q, max(q - 1, 0)] = 1.0
    out = batch_metrics(torch.zeros(1, t, 8), (att, att), x, y, c)
    assert out["score_acc"] == 1.0
