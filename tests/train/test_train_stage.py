"""Stage train_lm on tiny GPT-2 variants: curves with steps, the emergence profile, attention
shares on the first token / sink / k', and a trained checkpoint that the other stages load."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.analysis.profile import layer_landscape
from pipeline.context import Context
from pipeline.core.catalog import Catalog
from pipeline.core.loggers import Logger
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source
from pipeline.figures import draw_experiment
from pipeline.models.arch import get_arch
from pipeline.models.load import load_model
from pipeline.models.ma_gpt2 import MAGPTConfig, MAGPTForCausalLM
from pipeline.models.tiny import tiny_tokenizer
from pipeline.stages import train_lm
from pipeline.train import corpus
from tests.helpers import TEXT, run_stage

DATA = {"kind": "text", "text": TEXT, "joiner": "\n\n", "bos": "never"}
VARIANTS = {"default": {}, "sink": {"sink_tokens": 1}, "attn_bias": {"attn_bias": True}}


def context(tmp_path, model, tok, name, setting=None):
    data_cfg = {**DATA, "name": "tinytext"}
    results = ResultsWriter(tmp_path / "results", "gpt2", model=name, revision=None, dataset="tinytext", seed=0,
                            device="cpu", setting=setting)
    return Context(model=model, tokenizer=tok, arch=get_arch(model), device=torch.device("cpu"), model_name=name,
                   paper_key=None, data_cfg=data_cfg, source=build_source(data_cfg), results=results,
                   logger=Logger(), experiment="gpt2", seed=0, catalog=Catalog({"data": {"tinytext": data_cfg}}))


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_then_profile_the_checkpoint(tmp_path, monkeypatch, variant):
    monkeypatch.setattr(corpus, "CACHE_DIR", tmp_path / "cache")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = MAGPTForCausalLM(MAGPTConfig(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                         **VARIANTS[variant]))
    ctx = context(tmp_path, model, tok, variant)
    out = run_stage("train_lm", ctx, steps=4, micro_batch=2, block_size=32, eval_every=2, ckpt_every=2, eval_batches=1,
                       profile_sequences=2, data=["tinytext"], checkpoint_dir=str(tmp_path / "ckpt"))
    curve = ctx.results.read("train_curve")
    assert list(curve["step"]) == [1, 2, 3, 4] and curve["val_loss"].notna().tolist() == [False, True, False, True]
    assert len(ctx.results.read("train_profile")) == 2 * 2  # two evaluations x two layers
    land = ctx.results.read("train_landscape")  # paper A's 3-D plot: round(2 / 2) - 1 = layer 0
    n_text = len(tok("Summer is warm. Winter is cold.", add_special_tokens=False).input_ids)
    assert set(land["layer"]) == {0} and len(land) == (n_text + (variant == "sink")) * 32
    assert (land["token"].iloc[0] == "<sink_1>") == (variant == "sink")
    ctx.results.commit({})
    figs = sorted(p.name for p in draw_experiment(ctx.out_dir))
    assert figs == ["train_emergence.png", "train_landscape.png", "train_layers.png"], figs
    last = out["last"]
    assert math.isnan(last["attn_share_kprime"]) == (variant != "attn_bias")
    assert math.isnan(last["attn_share_sink"]) == (variant != "sink")
    assert 0 < last["attn_share_first"] < 1
    assert "massive by paper A's rule" in train_lm.format_summary(out)
    # the trained model is a model like any other: load it and profile it
    loaded, ltok, dev = load_model({"name": variant, "source": "local", "path": out["checkpoint"],
                                    "dtype": "float32", "device": "cpu"})
    prof = run_stage("ma_profile", context(tmp_path / "p", loaded, ltok, variant), n_sequences=2, seq_len=32)
    assert len(prof["layer_rows"]) == 2
    first = layer_landscape(context(tmp_path / "f", loaded, ltok, variant), "Summer is warm.", 0)[0]
    text_first = ltok.decode(ltok("Summer is warm.", add_special_tokens=False).input_ids[:1])
    assert first["token"] == ("<sink_1>" if variant == "sink" else text_first)  # the sink comes first, labelled
    # the attention stage and the super-weight detector run on every variant: the k' column is
    # split off the probabilities (its share reported), the sink leads the token list
    actx = context(tmp_path / "a", loaded, ltok, variant)
    att = run_stage("ma_attention", actx, prompt="Summer is warm. Winter is cold. The cat sat on the mat.", layers=[1])
    assert (att["tokens"][0] == "<sink_1>") == (variant == "sink")
    extra = [r["share_extra_slot"] for r in att["share_rows"]]
    assert all(0 < x < 1 for x in extra) if variant == "attn_bias" else all(math.isnan(x) for x in extra)
    det = run_stage("sw_detect", actx)
    assert len(det["maxima"]) == 2


def test_intervention_on_a_massive_activation_held_by_the_sink(tmp_path):
    """A sink variant whose sink token holds a planted massive activation: ma_intervene finds the
    site on role sink_1 (not on a text token), zeroing it changes the perplexity, and setting it to
    its mean does not."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = MAGPTForCausalLM(MAGPTConfig(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=3, n_head=4,
                                         sink_tokens=1)).eval()
    with torch.no_grad():
        model.transformer.sink[0, 0, 7] = 5000.0  # carried by the residual stream through every block
    out = run_stage("ma_intervene", context(tmp_path, model, tok, "sink"), calib_data="tinytext", calib_sequences=2,
                           calib_seq_len=32, ppl_data=["tinytext"], ppl_windows=2, ppl_seq_len=32, eval_suite=None)
    assert {(s["token_type"], s["dim"]) for s in out["sites"]} == {("sink_1", 7)}
    ppl = {r["condition"]: r["value"] for r in out["rows"] if r["metric"] == "ppl"}
    assert ppl["set_mean"] == pytest.approx(ppl["original"], rel=1e-4) and abs(ppl["set_zero"] - ppl["original"]) > 1e-3


def test_extending_steps_resumes_the_shorter_run(tmp_path, monkeypatch, capsys):
    """The default checkpoint folder is keyed on the training setting without ``steps``: a run
    with more steps resumes the shorter one (it used to start over), and its first steps are the
    shorter run's, bit for bit; another setting gets another folder."""
    monkeypatch.setattr(corpus, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(train_lm, "REPO_ROOT", tmp_path)
    tok = tiny_tokenizer()

    def run(steps, **extra):
        torch.manual_seed(0)
        model = MAGPTForCausalLM(MAGPTConfig(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4))
        ctx = context(tmp_path / f"r{steps}{len(extra)}", model, tok, "default", setting={"steps": steps, **extra})
        out = run_stage("train_lm", ctx, steps=steps, micro_batch=2, block_size=32, eval_every=2, ckpt_every=2,
                        eval_batches=1, profile_sequences=2, data=["tinytext"], decay_steps=6, **extra)
        return out, ctx.results.read("train_curve")

    short, short_curve = run(2)
    capsys.readouterr()
    long, long_curve = run(4)
    said = capsys.readouterr().out
    assert "resuming at step 2" in said and "cosine schedule" not in said  # decay_steps fixed: same schedule
    assert long["checkpoint"] == short["checkpoint"]
    assert list(long_curve["step"]) == [1, 2, 3, 4]
    assert long_curve["loss"].tolist()[:2] == short_curve["loss"].tolist()
    other, _ = run(4, lr=5e-4)  # another setting: its own folder, trained from step 0
    assert other["checkpoint"] != long["checkpoint"] and "resuming" not in capsys.readouterr().out
