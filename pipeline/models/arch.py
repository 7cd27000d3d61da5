"""Where the interesting modules live in each causal-LM architecture (transformers 5).

One :class:`ArchSpec` per ``config.model_type`` (never per model name). Every path below was
read off a tiny model built from a config with the pinned transformers 5.24 (``tests/unit/test_arch.py``
checks every one).

Paths are dotted attribute names; integer parts index a ``ModuleList``. ``layers``,
``final_norm``, ``lm_head`` and ``embed`` start at the ``*ForCausalLM`` root (the object
``AutoModelForCausalLM`` returns; an encoder's: the ``AutoModel`` one); ``attn``, ``mlp``,
``down_proj`` and the norms start at one decoder layer (an encoder's block).

Hook outputs (transformers 5.24): decoder layers return a plain Tensor (the residual stream after
the block) EXCEPT Falcon, which returns a tuple (hidden, None): always apply "Tensor, or element 0
of a tuple". Attention modules return a tuple (output, weights-or-None). OPT's ``fc2`` and the MoE
experts container return token-flattened (batch * seq, hidden) tensors; others (batch, seq, hidden).

Mixture-of-experts (``moe=True``): ``down_proj`` names the experts container (``mlp.experts``).
In transformers 5 the experts are NOT a ModuleList of Linear layers: the container holds fused
3-D ``nn.Parameter``s, ``gate_up_proj`` of shape (num_experts, 2 * expert_intermediate, hidden)
and ``down_proj`` of shape (num_experts, hidden, expert_intermediate); ``down_proj[e]`` is
oriented like ``nn.Linear.weight`` (out, in). ``expert_down_param`` names that parameter. The
experts' forward calls ``F.linear`` on slices, so no module hook sees one expert's down-projection
input; hook ``mlp.experts`` (its output is the routed sum) or patch the parameter instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.core.errors import PipelineError

LAYER_PARTS = ("attn", "mlp", "down_proj")


@dataclass(frozen=True)
class ArchSpec:
    """Module paths for one ``model_type``.

    Attributes:
        model_type: ``config.model_type`` this spec applies to.
        layers: root -> ModuleList of decoder layers.
        attn: layer -> self-attention module (its output is added to the residual stream).
        mlp: layer -> MLP / MoE block (OPT has no MLP container: ``fc2``, the MLP's last op).
        down_proj: layer -> MLP output projection (MoE: the experts container).
        final_norm: root -> norm applied after the last decoder layer; None in a post-LN encoder
            (BERT), where each block's own ``block_out_norm`` ends it.
        lm_head: root -> output projection to the vocabulary.
        embed: root -> input token embedding.
        weights_in_out: the decoder layers' linear weights are stored as (in, out) (GPT-2's
            ``Conv1D``), not (out, in) as ``nn.Linear``.
        moe: ``down_proj`` is an experts container holding a fused 3-D parameter.
        gated_mlp: GLU MLP (act(gate(x)) * up(x)) rather than fc -> act -> fc.
        fused_gate_up: gate and up projections are one matrix ``gate_up_proj`` (Phi-3 Linear,
            MoE experts' 3-D parameter); the first half of the output is the gate.
        expert_down_param: MoE only: name of the fused (experts, hidden, intermediate)
            down-projection parameter on the experts container.
        shared_down_proj: layer -> down projection of an always-on shared expert, if any.
        dense_down_proj: layer -> down projection of a MoE model's dense layers (Qwen-MoE
            ``mlp_only_layers`` / ``decoder_sparse_step``), used when a layer has no experts.
        input_norm / post_attn_norm: layer -> the norm feeding attention / the MLP (SmoothQuant
            folds its smoothing into their weights); None where there is no such norm.
        attn_out_norm / mlp_out_norm: layer -> a norm applied to the attention / MLP *output*
            before it joins the residual stream (Gemma-2/3, OLMo-2). Its gain can be hundreds, so
            what a weight writes into the residual is measured after it (the super-weight
            detector); None where the output joins the residual as it is.
        block_out_norm: layer -> post-LN (BERT): the norm of the residual SUM, LayerNorm(x +
            MLP(x)), whose output is the block's output. The massive-activation profile hooks the
            block outputs, i.e. AFTER this norm; ``pipeline.hooks.prenorm`` reads its INPUT (the
            un-normalised residual sum, where massive values show). None in pre-LN models.
        attn_inputs / mlp_inputs: layer -> the linears that read the attention / MLP input (q, k,
            v or a fused qkv; gate and up, or a fused gate_up / c_fc).
        mlp_up: layer -> a gated MLP's separate up projection (feeds ``down_proj`` one to one).
        prefix_tokens: encoders: the tokens before the patches, as (role, count) in order, the
            count an int or the name of a config attribute (DINOv2 registers:
            ``(("cls", 1), ("reg", "num_register_tokens"))``); see :func:`prefix_roles`.
        v_proj: layer -> attention value projection (a Linear whose output is the values of all
            key/value heads, (batch, seq, kv_heads * head_dim)); None where q/k/v are fused.
        image_encoder: a vision encoder (input ``pixel_values``, positions after the prefix tokens
            are patches); loaded with ``AutoModel`` and its image processor.
        text_encoder: a bidirectional text encoder (BERT): ``input_ids`` in, no LM head; loaded
            with ``AutoModel`` and its tokenizer.
        o_proj: layer -> attention output projection (input = heads concatenated head-major).
            Not quantized by W8A8 (as paper B); decomposed by ``ma_attention`` where it is a
            Linear and ``v_proj`` exists.
    """

    model_type: str
    layers: str
    attn: str
    mlp: str
    down_proj: str
    final_norm: str | None = None
    lm_head: str | None = None
    embed: str | None = None
    input_norm: str | None = None
    post_attn_norm: str | None = None
    attn_out_norm: str | None = None
    mlp_out_norm: str | None = None
    block_out_norm: str | None = None
    attn_inputs: tuple[str, ...] = ()
    mlp_inputs: tuple[str, ...] = ()
    mlp_up: str | None = None
    prefix_tokens: tuple[tuple[str, int | str], ...] = ()
    weights_in_out: bool = False
    moe: bool = False
    gated_mlp: bool = True
    fused_gate_up: bool = False
    expert_down_param: str | None = None
    shared_down_proj: str | None = None
    dense_down_proj: str | None = None
    v_proj: str | None = None
    o_proj: str | None = None
    image_encoder: bool = False   # takes pixel_values; loaded with AutoModel and an image processor
    text_encoder: bool = False    # takes input_ids, no LM head; loaded with AutoModel and its tokenizer


def _llama_like(model_type: str, **overrides: object) -> ArchSpec:
    """Spec for the Llama family layout: ``model.layers[i].{self_attn, mlp.down_proj}``."""
    fields: dict[str, object] = dict(
        layers="model.layers",
        attn="self_attn",
        mlp="mlp",
        down_proj="mlp.down_proj",
        final_norm="model.norm",
        lm_head="lm_head",
        embed="model.embed_tokens",
        v_proj="self_attn.v_proj",
        o_proj="self_attn.o_proj",
        input_norm="input_layernorm",
        post_attn_norm="post_attention_layernorm",
        attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        mlp_inputs=("mlp.gate_proj", "mlp.up_proj"),
        mlp_up="mlp.up_proj",
    )
    fields.update(overrides)
    return ArchSpec(model_type=model_type, **fields)  # type: ignore[arg-type]


_MOE: dict[str, object] = dict(
    down_proj="mlp.experts", moe=True, fused_gate_up=True, expert_down_param="down_proj",
    mlp_inputs=(), mlp_up=None,  # the experts' inputs are not module inputs (see the docstring)
)

_GPT2: dict[str, object] = dict(  # GPT-2 / nanoGPT module names
    layers="transformer.h", attn="attn", mlp="mlp", down_proj="mlp.c_proj", final_norm="transformer.ln_f",
    lm_head="lm_head", embed="transformer.wte", gated_mlp=False, o_proj="attn.c_proj", input_norm="ln_1",
    post_attn_norm="ln_2", attn_inputs=("attn.c_attn",), mlp_inputs=("mlp.c_fc",),
)

_SANDWICH: dict[str, object] = dict(
    post_attn_norm="pre_feedforward_layernorm", attn_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
)

_SPECS: list[ArchSpec] = [
    _llama_like("llama"),
    _llama_like("mistral"),
    _llama_like("qwen2"),
    _llama_like("qwen3"),
    _llama_like("gemma"),
    # Gemma-2/3 normalise both sublayer outputs before the residual ("sandwich" norms); the MLP
    # reads pre_feedforward_layernorm (post_attention_layernorm is the attention OUTPUT's norm)
    _llama_like("gemma2", **_SANDWICH),
    _llama_like("gemma3_text", **_SANDWICH),  # Gemma3ForCausalLM (text-only checkpoints: 270M, 1B)
    _llama_like("olmo"),  # transformers' native OLMo (the "-hf" checkpoints); norms have no weight
    # OLMo-2 normalises the attention and MLP *outputs* (post-norms): no norm feeds their inputs
    _llama_like("olmo2", input_norm=None, post_attn_norm=None, attn_out_norm="post_attention_layernorm",
                mlp_out_norm="post_feedforward_layernorm"),
    _llama_like("phi3", fused_gate_up=True, v_proj=None, attn_inputs=("self_attn.qkv_proj",),
                mlp_inputs=("mlp.gate_up_proj",), mlp_up=None),  # fused qkv_proj and gate_up_proj
    _llama_like("mixtral", **_MOE),
    _llama_like("olmoe", **_MOE),
    _llama_like(
        "qwen2_moe",
        **_MOE,
        shared_down_proj="mlp.shared_expert.down_proj",
        dense_down_proj="mlp.down_proj",
    ),
    _llama_like("qwen3_moe", **_MOE, dense_down_proj="mlp.down_proj"),
    # Gemma 3 multimodal (4B+): AutoModelForCausalLM builds Gemma3ForConditionalGeneration,
    # whose text decoder is model.language_model (a Gemma3TextModel); lm_head stays at the root.
    _llama_like(
        "gemma3",
        **_SANDWICH,
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        embed="model.language_model.embed_tokens",
    ),
    _llama_like("phi", down_proj="mlp.fc2", final_norm="model.final_layernorm", gated_mlp=False,
                o_proj="self_attn.dense", post_attn_norm=None, mlp_inputs=("mlp.fc1",), mlp_up=None),
    ArchSpec(model_type="gpt2", **_GPT2, weights_in_out=True),  # type: ignore[arg-type]  (Conv1D: (in, out))
    # paper A's GPT-2 variants (pipeline/models/ma_gpt2.py): the same layout with nn.Linear; the
    # sink variant's learnable tokens come before the text and carry no position
    ArchSpec(model_type="ma_gpt2", **_GPT2, prefix_tokens=(("sink", "sink_tokens"),)),  # type: ignore[arg-type]
    # paper C's 2-layer transformers (pipeline/models/birth.py); the simplified model has no FFN and
    # no norms (Identity modules), the full one a ReLU FFN ``ff`` (Sequential: 0 up, 2 down)
    ArchSpec(model_type="birth", layers="layers", attn="attention", mlp="ff", down_proj="ff.2", final_norm="norm",
             lm_head="output", embed="tok_embeddings", gated_mlp=False, input_norm="attention_norm",
             post_attn_norm="ffn_norm", attn_inputs=("attention.wk",), mlp_inputs=("ff.0",),
             v_proj="attention.wv", o_proj="attention.wo"),
    ArchSpec(
        model_type="opt",
        layers="model.decoder.layers",
        attn="self_attn",
        mlp="fc2",  # no MLP container; fc2 output is (batch * seq, hidden)
        down_proj="fc2",
        final_norm="model.decoder.final_layer_norm",  # None when do_layer_norm_before=False
        lm_head="lm_head",
        embed="model.decoder.embed_tokens",
        gated_mlp=False,
        v_proj="self_attn.v_proj",
        o_proj="self_attn.out_proj",
    ),
    # fused query_key_value in both: no separate values to decompose, no q/k/v groups to smooth
    ArchSpec(model_type="gpt_neox", layers="gpt_neox.layers", attn="attention", mlp="mlp",
             down_proj="mlp.dense_4h_to_h", final_norm="gpt_neox.final_layer_norm", lm_head="lm_head",
             embed="gpt_neox.embed_in", gated_mlp=False, o_proj="attention.dense"),
    ArchSpec(model_type="falcon", layers="transformer.h", attn="self_attention", mlp="mlp",
             down_proj="mlp.dense_4h_to_h", final_norm="transformer.ln_f", lm_head="lm_head",
             embed="transformer.word_embeddings", gated_mlp=False, o_proj="self_attention.dense"),
]

# Encoders (paper A §5, ViTs): no LM head or token embedding; tokens before the patches carry roles.
_DINOV2: dict[str, object] = dict(
    layers="encoder.layer", attn="attention", mlp="mlp", down_proj="mlp.fc2", final_norm="layernorm",
    gated_mlp=False, input_norm="norm1", post_attn_norm="norm2", image_encoder=True,
    attn_inputs=("attention.q_proj", "attention.k_proj", "attention.v_proj"), mlp_inputs=("mlp.fc1",),
    v_proj="attention.v_proj", o_proj="attention.o_proj",
)
_SPECS += [
    ArchSpec(model_type="dinov2", **_DINOV2, prefix_tokens=(("cls", 1),)),  # type: ignore[arg-type]
    ArchSpec(model_type="dinov2_with_registers", **_DINOV2,  # type: ignore[arg-type]
             prefix_tokens=(("cls", 1), ("reg", "num_register_tokens"))),
    # CLIP's post_layernorm normalises the pooled CLS token only (last_hidden_state is not normed)
    ArchSpec(model_type="clip_vision_model", layers="encoder.layers", attn="self_attn", mlp="mlp",
             down_proj="mlp.fc2", final_norm="post_layernorm", embed=None, gated_mlp=False,
             input_norm="layer_norm1", post_attn_norm="layer_norm2", v_proj="self_attn.v_proj",
             o_proj="self_attn.out_proj", attn_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             mlp_inputs=("mlp.fc1",), prefix_tokens=(("cls", 1),), image_encoder=True),
    ArchSpec(model_type="vit", layers="layers", attn="attention", mlp="mlp", down_proj="mlp.fc2",
             final_norm="layernorm", embed=None, gated_mlp=False, input_norm="layernorm_before",
             post_attn_norm="layernorm_after", v_proj="attention.v_proj", o_proj="attention.o_proj",
             attn_inputs=("attention.q_proj", "attention.k_proj", "attention.v_proj"), mlp_inputs=("mlp.fc1",),
             prefix_tokens=(("cls", 1),), image_encoder=True),
    # BERT, post-LN: each sub-block ends in LayerNorm(x + sublayer(x)); ``attn`` is the attention
    # sub-block (output AFTER its add & norm, returns the weights); no MLP container: mlp = down_proj =
    # output.dense. The profile reads block outputs, AFTER output.LayerNorm (block_out_norm);
    # pipeline.hooks.prenorm reads its INPUT, the residual sum. SmoothQuant cannot fold into a norm
    # whose output is also the residual: input_norm / post_attn_norm None. No final norm.
    ArchSpec(model_type="bert", layers="encoder.layer", attn="attention", mlp="output.dense",
             down_proj="output.dense", embed="embeddings.word_embeddings", gated_mlp=False,
             block_out_norm="output.LayerNorm", text_encoder=True, v_proj="attention.self.value",
             o_proj="attention.output.dense", mlp_inputs=("intermediate.dense",),
             attn_inputs=("attention.self.query", "attention.self.key", "attention.self.value")),
]

ARCH_SPECS: dict[str, ArchSpec] = {spec.model_type: spec for spec in _SPECS}


def known_model_types() -> list[str]:
    """Sorted list of the ``model_type`` values that have an :class:`ArchSpec`."""
    return sorted(ARCH_SPECS)


def _model_type(model_or_config: object) -> str:
    """``model_type`` of a model (via ``.config``) or of a config; PipelineError if neither."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise PipelineError(
            f"cannot tell the architecture of a {type(model_or_config).__name__}: "
            "expected a transformers model or config with a model_type"
        )
    return model_type


def get_arch(model_or_config: object) -> ArchSpec:
    """The :class:`ArchSpec` for a ``PreTrainedModel`` or a ``PretrainedConfig``."""
    model_type = _model_type(model_or_config)
    spec = ARCH_SPECS.get(model_type)
    if spec is None:
        raise PipelineError(
            f"unknown model_type '{model_type}'; known: {', '.join(known_model_types())} "
            "(add an ArchSpec in pipeline/models/arch.py)"
        )
    return spec


def resolve(root: nn.Module, path: str, model_type: str | None = None) -> nn.Module | nn.Parameter:
    """Follow a dotted ``path`` from ``root``; integer parts index ModuleLists.

    ``model_type`` only labels the error message; it defaults to ``root.config.model_type``
    (or the root's class name). A missing or ``None`` step raises PipelineError.
    """
    if model_type is None:
        config = getattr(root, "config", None)
        model_type = getattr(config, "model_type", None) or type(root).__name__
    node: object = root
    done: list[str] = []
    for part in path.split("."):
        nxt: object = None
        if part.isdigit() and isinstance(node, (nn.ModuleList, nn.Sequential)):
            if int(part) < len(node):
                nxt = node[int(part)]
        elif part:
            nxt = getattr(node, part, None)
        if nxt is None:
            where = f" under '{'.'.join(done)}'" if done else ""
            raise PipelineError(
                f"module path '{path}' not found in the {model_type} model (no '{part}'{where}); "
                "fix its ArchSpec in pipeline/models/arch.py"
            )
        node = nxt
        done.append(part)
    if not isinstance(node, (nn.Module, nn.Parameter)):
        raise PipelineError(
            f"module path '{path}' in the {model_type} model is a {type(node).__name__}, "
            "not a module or parameter; fix its ArchSpec in pipeline/models/arch.py"
        )
    return node


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers of a causal LM."""
    spec = get_arch(model)
    layers = resolve(model, spec.layers, spec.model_type)
    if not isinstance(layers, nn.ModuleList):
        raise PipelineError(
            f"'{spec.layers}' in the {spec.model_type} model is a {type(layers).__name__}, "
            "not a ModuleList; fix its ArchSpec in pipeline/models/arch.py"
        )
    return layers


def prefix_roles(model_or_config: object) -> list[str]:
    """Role of each prefix token of an encoder, in order (``["cls", "reg_1", ..., "reg_4"]``; a
    count of one keeps the bare role), read from the spec's ``prefix_tokens`` and the config."""
    spec = get_arch(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    roles: list[str] = []
    for role, count in spec.prefix_tokens:
        n = int(getattr(config, count, 0) or 0) if isinstance(count, str) else int(count)
        roles += [role] if n == 1 and isinstance(count, int) else [f"{role}_{k + 1}" for k in range(n)]
    return roles


def is_image_encoder(model_or_config: object) -> bool:
    """Whether the model (or config) is a vision encoder, by its arch spec; False when unknown."""
    model_type = getattr(getattr(model_or_config, "config", model_or_config), "model_type", None)
    return model_type in ARCH_SPECS and ARCH_SPECS[model_type].image_encoder


def residual_width(model: nn.Module) -> int:
    """Width of the residual stream (the decoder layers' output), from the model's text config;
    not the embedding width, which differs where embeddings are projected (OPT-350m: 512 -> 1024)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


def layer(model: nn.Module, i: int) -> nn.Module:
    """Decoder layer ``i`` (0-based; negative indices are rejected, not wrapped)."""
    layers = decoder_layers(model)
    n = len(layers)
    if not 0 <= i < n:
        raise PipelineError(
            f"layer {i} is out of range: {get_arch(model).model_type} model has {n} decoder "
            f"layers (valid: 0..{n - 1})"
        )
    return layers[i]


def layer_module(model: nn.Module, i: int, part: str) -> nn.Module:
    """Submodule ``part`` ("attn", "mlp" or "down_proj") of decoder layer ``i``.

    For MoE specs "down_proj" is the experts container (see the module docstring); on a dense
    layer of a MoE model it falls back to ``dense_down_proj`` when the spec names one.
    """
    if part not in LAYER_PARTS:
        raise PipelineError(f"unknown layer part '{part}'; choose one of {', '.join(LAYER_PARTS)}")
    spec = get_arch(model)
    block = layer(model, i)
    path = getattr(spec, part)
    if part == "down_proj" and spec.dense_down_proj and resolve_or_none(block, path) is None:
        path = spec.dense_down_proj
    found = resolve(block, path, spec.model_type)
    if not isinstance(found, nn.Module):
        raise PipelineError(
            f"'{path}' in layer {i} of the {spec.model_type} model is a parameter, not a module; "
            "fix its ArchSpec in pipeline/models/arch.py"
        )
    return found


def resolve_or_none(root: nn.Module, path: str) -> nn.Module | nn.Parameter | None:
    """:func:`resolve`, or None when the path does not exist."""
    try:
        return resolve(root, path)
    except PipelineError:
        return None
