"""A second real model, Gemma-3-270M (Q4_K_M GGUF in four chunk packages), through the
pipeline, each finding checked against a plain-transformers computation in the test itself.

Its tokenizer adds a BOS, it normalises the MLP output before the residual, and its first token
holds a transient massive dim (layers 0-6) before the steady one (from layer 3): the four ways the
pipeline used to go silently wrong on a model that is not Llama-shaped.
"""

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.analysis.massive import massive_mask
from pipeline.context import Context
from pipeline.core.loggers import Logger
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source, tokenizer_adds_bos
from pipeline.models.arch import get_arch
from pipeline.models.load import load_model
from tests.helpers import run_stage
from tests.unit.test_config import CONF

pytestmark = [pytest.mark.real, pytest.mark.slow]
PROMPT = "Apple Inc. is a worldwide tech company."


@pytest.fixture(scope="module")
def gemma():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "gemma3_270m.yaml"))
    return load_model(cfg)  # first time: joins the chunks, checks the sha256, converts (~100-210 s)


@pytest.fixture
def ctx(gemma, tmp_path):
    model, tok, device = gemma
    data_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "wiki_summaries.yaml"))
    results = ResultsWriter(tmp_path, "real", model="gemma3_270m", revision=None, dataset=data_cfg["name"],
                            seed=0, device="cpu")
    return Context(model=model, tokenizer=tok, arch=get_arch(model), device=device, model_name="gemma3_270m",
                   paper_key=None, data_cfg=data_cfg, source=build_source(data_cfg), results=results,
                   logger=Logger(), experiment="real", seed=0)


def _plain_hidden(model, ids):
    """Decoder-layer outputs from transformers' own output_hidden_states (no pipeline hooks)."""
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[1:]


def test_the_model_and_its_bos(ctx):
    assert get_arch(ctx.model).mlp_out_norm == "post_feedforward_layernorm"
    assert tokenizer_adds_bos(ctx.tokenizer)
    windows = ctx.windows(64, 2)
    assert (windows[:, 0] == ctx.tokenizer.bos_token_id).all()
    assert ctx.encode(PROMPT)[0, 0] == ctx.tokenizer.bos_token_id and ctx.adds_bos()


def test_profile_finds_the_steady_dim_where_plain_transformers_does(ctx):
    out = run_stage("ma_profile", ctx, n_sequences=2, seq_len=128)
    steady = [m for m in out["massive"] if m["steady"]]
    first = min(m["first_layer"] for m in steady)
    assert out["fig1_layer"] == first and "not steady, skipped" in out["fig1_why"]
    hs = _plain_hidden(ctx.model, ctx.windows(128, 1))
    # independently: the first layer where the first token's largest dim is massive and stays
    # the largest for most of the remaining layers
    top = [int(h[0, 0].abs().argmax()) for h in hs]
    dim = max(set(top), key=top.count)
    assert {m["dim"] for m in steady if m["token_type"] == "first_token"} == {dim}
    assert first == min(i for i, h in enumerate(hs) if massive_mask(h[0], 100.0, 1000.0)[0, dim])


def test_super_weight_detector_reports_the_distributed_structure(ctx):
    out = run_stage("sw_detect", ctx, detect_prompt=PROMPT)
    ids = ctx.encode(PROMPT)
    hs = _plain_hidden(ctx.model, ids)
    peak_layer = max(range(len(hs)), key=lambda i: float(hs[i][0].abs().max()))
    t, d = divmod(int(hs[peak_layer][0].abs().argmax()), hs[peak_layer].shape[-1])
    (row,) = [r for r in out["structure"] if (r["token"], r["dim"]) == (t, d)]
    assert row["peak_layer"] == peak_layer and row["structure"].startswith("distributed")
    # each writer's contribution, recomputed with plain hooks on the post-MLP norm
    written = {}
    layers = ctx.model.model.layers
    handles = [layers[i].post_feedforward_layernorm.register_forward_hook(
        lambda _m, _a, o, i=i: written.__setitem__(i, float(o[0, t, d]))) for i in range(len(layers))]
    try:
        with torch.no_grad():
            ctx.model(ids)
    finally:
        for h in handles:
            h.remove()
    writers = [int(x) for x in row["writer_layers"].split()]
    peak = float(hs[peak_layer][0, t, d])
    assert writers == [i for i in range(peak_layer + 1)
                       if written[i] * peak > 0 and abs(written[i]) >= 0.05 * abs(peak)]
    assert len(writers) >= 5 and row["remaining_after_top_writer"] > 0.5
