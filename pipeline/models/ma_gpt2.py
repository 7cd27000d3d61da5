"""Paper A's GPT-2 variants as ONE transformers model class with flags (not three copies).

``MAGPT`` is nanoGPT's GPT-2 (pre-norm blocks, learned positions, GELU MLP, tied head,
``bias=False`` as paper A's train.py) with two switches:

  sink_tokens = n   n learnable vectors prepended AFTER the position embeddings are added (they
                    carry no position), run through every block, dropped before the final norm
                    (paper A's ``gpt2_sink``, ``num_reg=1``).
  attn_bias = True  per layer and head a learnable key k' and value v' (N(0, 0.02^2)), an extra
                    first key/value slot every query may attend to:
                    softmax(Q [k'; K]^T / sqrt(d_h)) [v'; V]   (paper A's ``gpt2_attn_bias``).
                    The mask is causal over the real keys plus an always-visible first column,
                    built for the shapes it is used with (the official non-flash path was not).

Registered as ``model_type = "ma_gpt2"`` with ``AutoConfig`` / ``AutoModelForCausalLM``, so a
checkpoint saved with ``save_pretrained`` loads like any model (``source: local``) and every
stage runs on it through its arch spec. Attention returns its probabilities when the config's
implementation is "eager" (the attention stage switches to it), else runs SDPA with no mask
tensor (``is_causal``, or a lower-right causal bias object for the k'/v' slot), so that on a GPU
SDPA may choose the FlashAttention kernel (an explicit boolean mask rules it out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput


class MAGPTConfig(PretrainedConfig):
    model_type = "ma_gpt2"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                     "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}

    def __init__(self, vocab_size: int = 50304, n_positions: int = 1024, n_embd: int = 768, n_layer: int = 12,
                 n_head: int = 12, bias: bool = False, attn_bias: bool = False, sink_tokens: int = 0,
                 tie_word_embeddings: bool = True, **kwargs):
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.n_layer, self.n_head, self.bias = n_layer, n_head, bias
        self.attn_bias, self.sink_tokens = attn_bias, sink_tokens
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def attn_bias_mask(t: int, device=None) -> torch.Tensor:
    """(t, 1 + t) boolean mask, True = may attend: the k' slot (column 0) always, then causal."""
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    return torch.cat([torch.ones(t, 1, dtype=torch.bool, device=device), causal], dim=1)


class Attention(nn.Module):
    def __init__(self, config: MAGPTConfig):
        super().__init__()
        self.config, self.n_head = config, config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj._residual = True  # nanoGPT: residual projections start smaller
        if config.attn_bias:
            self.k_bias = nn.Parameter(torch.randn(1, config.n_head, 1, self.head_dim) * 0.02)
            self.v_bias = nn.Parameter(torch.randn(1, config.n_head, 1, self.head_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        if self.config.attn_bias:
            k = torch.cat([self.k_bias.expand(b, -1, -1, -1).to(k.dtype), k], dim=2)
            v = torch.cat([self.v_bias.expand(b, -1, -1, -1).to(v.dtype), v], dim=2)
        probs = None
        if getattr(self.config, "_attn_implementation", None) == "eager":
            mask = (attn_bias_mask(t, x.device) if self.config.attn_bias
                    else torch.ones(t, t, dtype=torch.bool, device=x.device).tril())
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            y = probs @ v
        elif self.config.attn_bias:  # T queries x (1 + T) keys: causal aligned to the lower right
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, t + 1))
        else:  # no mask tensor: SDPA may pick the FlashAttention kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y), probs


class MLP(nn.Module):
    def __init__(self, config: MAGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj._residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: MAGPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: MAGPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        if config.sink_tokens:
            self.sink = nn.Parameter(torch.randn(1, config.sink_tokens, config.n_embd) * 0.02)


class MAGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MAGPTConfig
    base_model_prefix = "transformer"
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _supports_sdpa = True

    def __init__(self, config: MAGPTConfig):
        super().__init__(config)
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """nanoGPT's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "_residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, logits_to_keep: int = 0,
                **_ignored) -> CausalLMOutput:
        b, t = input_ids.shape
        if t > self.config.n_positions:
            raise ValueError(f"sequence of {t} tokens is longer than the context ({self.config.n_positions})")
        tr = self.transformer
        x = tr.wte(input_ids) + tr.wpe(torch.arange(t, device=input_ids.device))
        n_sink = self.config.sink_tokens
        if n_sink:  # after the positions: the sink carries none
            x = torch.cat([tr.sink.expand(b, -1, -1).to(x.dtype), x], dim=1)
        for block in tr.h:
            x = block(x)
        x = tr.ln_f(x[:, n_sink:])  # the sink is dropped before the final norm
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        return CausalLMOutput(loss=loss, logits=logits)


AutoConfig.register("ma_gpt2", MAGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(MAGPTConfig, MAGPTForCausalLM, exist_ok=True)
