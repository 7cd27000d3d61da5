"""ArchSpec paths checked against tiny random models built from configs (transformers 5)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from pipeline.core.errors import PipelineError
from pipeline.models import arch

H = 32  # hidden size of every tiny model
COMMON = dict(
    hidden_size=H,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    head_dim=8,
)
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)
VIT = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=28,
           patch_size=14)

# model_type -> config kwargs (tiny; every ArchSpec must have an entry here)
CONFIG_KWARGS: dict[str, dict] = {
    "llama": COMMON,
    "mistral": COMMON,
    "qwen2": COMMON,
    "qwen3": COMMON,
    "gemma": COMMON,
    "gemma2": COMMON,
    "gemma3_text": COMMON,
    "olmo": {**COMMON, **TOKENS},
    "olmo2": {**COMMON, **TOKENS},
    "phi": COMMON,
    "phi3": {**COMMON, **TOKENS},
    "mixtral": {**COMMON, "num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {**COMMON, **TOKENS, "num_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**COMMON, **MOE, "num_experts": 4, "shared_expert_intermediate_size": 32},
    "qwen3_moe": {**COMMON, **MOE, "num_experts": 4},
    "gemma3": dict(
        text_config=COMMON,
        vision_config=dict(
            hidden_size=H,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=16,
            patch_size=4,
        ),
        mm_tokens_per_image=4,
    ),
    "gpt2": dict(n_embd=H, n_layer=2, n_head=4, n_positions=64, vocab_size=128, **TOKENS),
    "ma_gpt2": dict(n_embd=H, n_layer=2, n_head=4, n_positions=64, vocab_size=128, attn_bias=True, **TOKENS),
    "opt": dict(
        hidden_size=H,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        word_embed_proj_dim=H,
        max_position_embeddings=64,
        **TOKENS,
    ),
    "gpt_neox": {**COMMON, **TOKENS, "max_position_embeddings": 64},
    "falcon": dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, vocab_size=128),
    # encoders: a 28 x 28 image in 14 x 14 patches = 4 patches, + CLS (+ 4 registers)
    "dinov2": VIT,
    "dinov2_with_registers": {**VIT, "num_register_tokens": 4},
    "clip_vision_model": VIT,
    "vit": VIT,
    # a post-LN text encoder (AutoModel: BertModel, no LM head)
    "bert": dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=128,
                 max_position_embeddings=64),
    # paper C's 2-layer transformer (pipeline/models/birth.py), full variant: it has every part
    "birth": dict(vocab_size=128, dim=H, n_heads=4, n_positions=64, layernorm=True, wq_identity=False,
                  first_ffn="mlp", final_ffn="mlp", positions="learned", frozen=[]),
}
ENCODERS = ("dinov2", "dinov2_with_registers", "clip_vision_model", "vit")
TEXT_ENCODERS = ("bert",)  # input_ids in, no LM head (AutoModel)


def tiny_config(model_type: str, **extra: object) -> PretrainedConfig:
    """Tiny config for ``model_type`` (plus overrides)."""
    return AutoConfig.for_model(model_type, **{**CONFIG_KWARGS[model_type], **extra})


@functools.cache
def tiny_model(model_type: str) -> nn.Module:
    """Tiny random causal LM for ``model_type``, built once per test session."""
    torch.manual_seed(0)
    auto = AutoModel if model_type in ENCODERS + TEXT_ENCODERS else AutoModelForCausalLM
    return auto.from_config(tiny_config(model_type)).eval()


def _run(model: nn.Module) -> None:
    """One forward on 5 tokens (decoders) or one 28 x 28 image (encoders)."""
    with torch.no_grad():
        if model.config.model_type in ENCODERS:
            model(pixel_values=torch.randn(1, 3, 28, 28))
        else:
            model(torch.randint(3, 100, (1, 5)))


def _n_tokens(model: nn.Module) -> int:
    return 5 + len(arch.prefix_roles(model)) - (1 if model.config.model_type in ENCODERS else 0)


def _text(config: PretrainedConfig) -> PretrainedConfig:
    return config.get_text_config()


def _out_tensor(output: object) -> torch.Tensor:
    """Tensor or tuple rule: transformers 5 decoder layers return a Tensor."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _capture(module: nn.Module, model: nn.Module) -> torch.Tensor:
    """Run a forward pass and return ``module``'s output (as a Tensor)."""
    seen: list[object] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        _run(model)
    finally:
        handle.remove()
    assert len(seen) == 1
    return _out_tensor(seen[0])


def test_every_spec_has_a_tiny_config() -> None:
    assert set(arch.ARCH_SPECS) == set(CONFIG_KWARGS)
    assert arch.known_model_types() == sorted(CONFIG_KWARGS)
    for key, spec in arch.ARCH_SPECS.items():
        assert spec.model_type == key


@pytest.mark.parametrize("model_type", arch.known_model_types())
def test_paths_resolve(model_type: str) -> None:
    model = tiny_model(model_type)
    spec = arch.get_arch(model)
    assert spec.model_type == model_type
    for path in (spec.layers, spec.final_norm, spec.lm_head, spec.embed):
        assert path is None or isinstance(arch.resolve(model, path), nn.Module)
    assert (spec.lm_head is None) == (model_type in ENCODERS + TEXT_ENCODERS)
    assert spec.text_encoder == (model_type in TEXT_ENCODERS) and (spec.final_norm is None) == spec.text_encoder
    n = _text(model.config).num_hidden_layers
    assert arch.num_layers(model) == n == len(arch.decoder_layers(model))
    for i in range(n):
        block = arch.layer(model, i)
        assert block is arch.decoder_layers(model)[i]
        for part in arch.LAYER_PARTS:
            assert arch.layer_module(model, i, part) is arch.resolve(block, getattr(spec, part))


@pytest.mark.parametrize("model_type", arch.known_model_types())
def test_down_proj_output_is_hidden(model_type: str) -> None:
    model = tiny_model(model_type)
    spec = arch.get_arch(model)
    hidden = _text(model.config).hidden_size
    down = arch.layer_module(model, 0, "down_proj")
    if spec.moe:
        assert spec.expert_down_param
        weight = arch.resolve(down, spec.expert_down_param)
        assert isinstance(weight, nn.Parameter) and weight.dim() == 3
        assert weight.shape[1] == hidden  # (experts, hidden, intermediate)
    elif spec.weights_in_out:
        assert isinstance(down, Conv1D) and down.weight.shape[1] == hidden
    else:
        assert isinstance(down, nn.Linear) and down.weight.shape[0] == hidden
    if spec.shared_down_proj:
        shared = arch.resolve(arch.layer(model, 0), spec.shared_down_proj)
        assert isinstance(shared, nn.Linear) and shared.weight.shape[0] == hidden
    if spec.fused_gate_up and not spec.moe:
        assert isinstance(
            arch.resolve(arch.layer_module(model, 0, "mlp"), "gate_up_proj"), nn.Linear
        )


@pytest.mark.parametrize("model_type", arch.known_model_types())
def test_hooks_see_hidden_size(model_type: str) -> None:
    model = tiny_model(model_type)
    spec = arch.get_arch(model)
    hidden = _text(model.config).hidden_size
    out = _capture(arch.layer(model, 0), model)
    assert out.shape == (1, _n_tokens(model), hidden)
    if spec.final_norm is not None:  # None: a post-LN encoder, its last block's norm ends it
        final = _capture(arch.resolve(model, spec.final_norm), model).shape
        # CLIP's vision tower normalises only the pooled CLS token after its last block
        assert final == ((1, hidden) if model_type == "clip_vision_model" else (1, _n_tokens(model), hidden))
    assert _capture(arch.layer_module(model, 1, "attn"), model).shape[-1] == hidden
    assert _capture(arch.layer_module(model, 1, "mlp"), model).shape[-1] == hidden


def test_output_types_documented_in_arch() -> None:
    """transformers 5.23 facts the Tensor-or-tuple accessor and reshapes rely on."""

    def raw(model_type: str, module: nn.Module) -> object:
        seen: list[object] = []
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
        with torch.no_grad():
            tiny_model(model_type)(torch.randint(3, 100, (1, 5)))
        handle.remove()
        return seen[0]

    assert type(raw("llama", arch.layer(tiny_model("llama"), 0))) is torch.Tensor
    falcon_out = raw("falcon", arch.layer(tiny_model("falcon"), 0))
    assert isinstance(falcon_out, tuple) and falcon_out[0].shape == (1, 5, H)
    assert isinstance(raw("llama", arch.layer_module(tiny_model("llama"), 0, "attn")), tuple)
    assert raw("opt", arch.layer_module(tiny_model("opt"), 0, "down_proj")).shape == (5, H)
    experts = arch.layer_module(tiny_model("mixtral"), 0, "down_proj")
    assert raw("mixtral", experts).shape == (5, H)


def test_get_arch_from_config_and_model() -> None:
    config = tiny_config("llama")
    assert arch.get_arch(config) is arch.get_arch(tiny_model("llama")) is arch.ARCH_SPECS["llama"]
    assert arch.get_arch(tiny_config("gpt2")).weights_in_out


def test_unknown_model_type_lists_known() -> None:
    config = PretrainedConfig()
    config.model_type = "xyz"
    with pytest.raises(PipelineError) as err:
        arch.get_arch(config)
    msg = str(err.value)
    assert msg.startswith("unknown model_type 'xyz'; known: ")
    assert ", ".join(arch.known_model_types()) in msg and "pipeline/models/arch.py" in msg
    with pytest.raises(PipelineError, match="cannot tell the architecture"):
        arch.get_arch(nn.Linear(2, 2))


@pytest.mark.parametrize("index", [30, 2, -1])
def test_layer_out_of_range(index: int) -> None:
    model = tiny_model("llama")
    expected = f"layer {index} is out of range: llama model has 2 decoder layers (valid: 0..1)"
    with pytest.raises(PipelineError, match=re.escape(expected)):
        arch.layer(model, index)
    with pytest.raises(PipelineError, match="out of range"):
        arch.layer_module(model, index, "mlp")


def test_resolve_errors_and_parameters() -> None:
    model = tiny_model("llama")
    with pytest.raises(PipelineError, match=r"'model\.nope\.x' not found in the llama model"):
        arch.resolve(model, "model.nope.x")
    with pytest.raises(PipelineError, match="'model.layers.7'"):
        arch.resolve(model, "model.layers.7")
    assert isinstance(arch.resolve(model, "model.layers.1.mlp.down_proj.weight"), nn.Parameter)
    with pytest.raises(PipelineError, match="unknown layer part"):
        arch.layer_module(model, 0, "ffn")
    # OPT-350m style: no final layer norm (the attribute exists but is None)
    opt = AutoModelForCausalLM.from_config(tiny_config("opt", do_layer_norm_before=False))
    with pytest.raises(PipelineError, match="final_layer_norm"):
        arch.resolve(opt, arch.get_arch(opt).final_norm)


def test_moe_model_with_dense_layers() -> None:
    config = tiny_config("qwen2_moe", mlp_only_layers=[0])
    model = AutoModelForCausalLM.from_config(config)
    assert isinstance(arch.layer_module(model, 0, "down_proj"), nn.Linear)
    experts = arch.layer_module(model, 1, "down_proj")
    assert experts is arch.resolve(arch.layer(model, 1), "mlp.experts")


def _code_without_docs(source: str) -> str:
    """Python source with docstrings and comments removed (ast round trip)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def test_no_model_name_substrings_in_pipeline_code() -> None:
    """Architecture is chosen by config.model_type, never by model-name substrings in code."""
    banned = ("Llama-2", "llama2", "huggyllama", "SmolLM", "Mistral-7B")
    root = Path(__file__).resolve().parents[2] / "pipeline"
    files = sorted(root.rglob("*.py"))
    assert root / "models" / "arch.py" in files
    hits = [
        f"{path.relative_to(root.parent)}: {name}"
        for path in files
        for name in banned
        if name in _code_without_docs(path.read_text(encoding="utf-8"))
    ]
    assert not hits, f"model names hard-coded in pipeline code: {hits}"


def test_code_scan_ignores_docs_only() -> None:
    source = '"""Doc: SmolLM."""\n# llama2\ndef f():\n    """Llama-2."""\n    return "Mistral-7B"\n'
    code = _code_without_docs(source)
    assert "Mistral-7B" in code and "SmolLM" not in code and "llama2" not in code


@pytest.mark.parametrize("model_type", arch.known_model_types())
def test_attention_value_and_output_projections(model_type: str) -> None:
    """v_proj / o_proj (attention-output decomposition): Linear layers of the right shapes, or
    None where the values are fused into one qkv matrix or the projection is a Conv1D."""
    model = tiny_model(model_type)
    spec = arch.get_arch(model)
    if model_type in ("gpt2", "falcon", "gpt_neox"):  # fused qkv: no values to decompose
        assert spec.v_proj is None and spec.o_proj is not None
        assert isinstance(arch.resolve(arch.layer(model, 0), spec.o_proj), (nn.Linear, Conv1D))
        return
    text = _text(model.config)
    block = arch.layer(model, 0)
    o_proj = arch.resolve(block, spec.o_proj)
    assert isinstance(o_proj, nn.Linear) and o_proj.out_features == text.hidden_size
    assert o_proj.in_features % text.num_attention_heads == 0
    if model_type in ("phi3", "ma_gpt2"):  # fused qkv_proj / c_attn
        assert spec.v_proj is None
        return
    v_proj = arch.resolve(block, spec.v_proj)
    head_dim = o_proj.in_features // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    assert isinstance(v_proj, nn.Linear) and v_proj.out_features == kv_heads * head_dim
    assert v_proj.in_features == text.hidden_size


@pytest.mark.parametrize("model_type", arch.known_model_types())
def test_smoothing_and_quantization_sites_resolve(model_type: str) -> None:
    """Norms and the linears they feed (SmoothQuant), the output projection (skipped by W8A8):
    every path the arch spec names exists, with the right widths."""
    model = tiny_model(model_type)
    spec = arch.get_arch(model)
    block = arch.layer(model, 0)
    hidden = _text(model.config).hidden_size
    for norm, inputs in ((spec.input_norm, spec.attn_inputs), (spec.post_attn_norm, spec.mlp_inputs)):
        weight = getattr(arch.resolve(block, norm), "weight", None) if norm else None
        assert weight is None or weight.shape[0] == hidden  # OLMo's LayerNorm has no weight
        for path in inputs:
            m = arch.resolve(block, path)
            assert (m.weight.shape[0] if spec.weights_in_out else m.weight.shape[1]) == hidden
    if spec.mlp_up:
        assert arch.resolve(block, spec.mlp_up).weight.shape[0] == arch.resolve(block, spec.down_proj).weight.shape[1]


def test_prefix_roles_read_from_config() -> None:
    assert arch.prefix_roles(tiny_model("dinov2")) == ["cls"]
    assert arch.prefix_roles(tiny_model("dinov2_with_registers")) == ["cls", "reg_1", "reg_2", "reg_3", "reg_4"]
    assert arch.prefix_roles(tiny_model("llama")) == []


def test_residual_width_is_not_the_embedding_width() -> None:
    """Defect: the random control read the hidden size from the embedding width, which OPT-350m
    projects (512 -> 1024)."""
    model = AutoModelForCausalLM.from_config(tiny_config("opt", word_embed_proj_dim=16)).eval()
    assert model.get_input_embeddings().weight.shape[1] == 16
    assert arch.residual_width(model) == H == _capture(arch.layer(model, 0), model).shape[-1]


_NORMED = [t for t, s in sorted(arch.ARCH_SPECS.items()) if s.post_attn_norm or s.mlp_out_norm or s.attn_out_norm]


@pytest.mark.parametrize("model_type", _NORMED)
def test_norms_sit_where_the_spec_says(model_type: str) -> None:
    """Measured on a forward, not read off names: ``post_attn_norm``'s output is the MLP's input,
    ``mlp_out_norm``'s input is the MLP's output (and ``attn_out_norm``'s the attention's).
    Defect: Gemma-2/3 named post_attention_layernorm (the attention OUTPUT's norm) as the norm
    feeding the MLP."""
    model = tiny_model(model_type)
    spec = arch.get_arch(model)
    block = arch.layer(model, 0)
    seen: dict[str, torch.Tensor] = {}

    def grab(key: str, kind: str):
        def hook(_m, args, out):
            t = args[0] if kind == "in" else (out[0] if isinstance(out, tuple) else out)
            seen[key] = t.detach().reshape(-1, t.shape[-1]).clone()
        return hook

    pairs = [(spec.post_attn_norm, "out", spec.mlp, "in"), (spec.mlp_out_norm, "in", spec.mlp, "out"),
             (spec.attn_out_norm, "in", spec.attn, "out")]
    pairs = [p for p in pairs if p[0]]
    handles = []
    for j, (norm, nkind, mod, mkind) in enumerate(pairs):
        handles.append(arch.resolve(block, norm).register_forward_hook(grab(f"n{j}", nkind)))
        handles.append(arch.resolve(block, mod).register_forward_hook(grab(f"m{j}", mkind)))
    try:
        _run(model)
    finally:
        for h in handles:
            h.remove()
    for j, (norm, _, mod, _) in enumerate(pairs):
        assert torch.allclose(seen[f"n{j}"], seen[f"m{j}"]), f"{model_type}: {norm} is not next to {mod}"
