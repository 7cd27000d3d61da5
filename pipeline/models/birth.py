"""Paper C's 2-layer transformers (Bietti et al. 2023 §4) as ONE transformers model class with
flags: the simplified model of §4.2 and the full model are configurations, not copies.

  simplified (``conf/model/birth_simplified.yaml``): one head per layer, no LayerNorm, W_Q = the
      identity, W_V frozen in both layers, W_O frozen in layer 1, fixed random (or sin/cos)
      positions added at the input, optional final FFN (linear by default), embeddings and
      unembedding optionally frozen, scores scaled by 1/sqrt(d) unless ``no_sqrtd``.
  full (``conf/model/birth_full.yaml``): pre-norm LayerNorm blocks with ``n_heads`` heads, a ReLU
      FFN of 4d in every layer, learned positions, a final LayerNorm, untied output.

``block`` is how a layer's FFN reads: ``sequential`` (the post-attention state, x + a + f(x + a):
the official simplified model) or ``parallel`` (the block input beside attention, x + a +
f(norm(x)): the official full model's pre-norm block, ``birth_full``'s default).

What differs from the official code (albietz/transformer-birth) on purpose: the device is the
caller's (it hard-codes ``.cuda()``); permanently frozen parameters are named in ``frozen`` (one
mechanism for every option); ``attn_bias`` adds paper A's learnable k'/v' slot (our extension:
does it take the start token's sink?). The loss takes ``targets`` already aligned with the inputs
(the official (x, y) pairs) with -100 where no loss is taken (``loss_head_only``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from pipeline.models.ma_gpt2 import attn_bias_mask

SIMPLIFIED_FROZEN = ("layers.0.attention.wv", "layers.1.attention.wv", "layers.0.attention.wo")


class BirthConfig(PretrainedConfig):
    model_type = "birth"
    attribute_map = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                     "max_position_embeddings": "n_positions"}  # (the official max_length)

    def __init__(self, vocab_size: int = 65, dim: int = 64, n_layers: int = 2, n_heads: int = 1,
                 n_positions: int = 256, layernorm: bool = False, wq_identity: bool = True,
                 first_ffn: str = "none", final_ffn: str = "none", positions: str = "random",
                 frozen: list[str] | tuple[str, ...] = SIMPLIFIED_FROZEN, remove_wv: bool = False,
                 remove_wo: bool = False, sqrtd_embeddings: bool = False, no_sqrtd: bool = False,
                 attn_bias: bool = False, block: str = "sequential", **kwargs):
        for name in ("first_ffn", "final_ffn"):
            if locals()[name] not in ("none", "linear", "mlp"):
                raise ValueError(f"{name} must be none, linear or mlp, not {locals()[name]!r}")
        if block not in ("sequential", "parallel"):
            raise ValueError(f"block must be sequential or parallel, not {block!r}")
        if positions not in ("random", "sincos", "learned"):
            raise ValueError(f"positions must be random, sincos or learned, not {positions!r}")
        self.vocab_size, self.dim, self.n_layers, self.n_heads = vocab_size, dim, n_layers, n_heads
        self.n_positions, self.layernorm, self.wq_identity = n_positions, layernorm, wq_identity
        self.first_ffn, self.final_ffn, self.positions, self.frozen = first_ffn, final_ffn, positions, list(frozen)
        self.remove_wv, self.remove_wo = remove_wv, remove_wo
        self.sqrtd_embeddings, self.no_sqrtd, self.attn_bias = sqrtd_embeddings, no_sqrtd, attn_bias
        self.block = block
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class Attention(nn.Module):
    def __init__(self, c: BirthConfig):
        super().__init__()
        self.c, self.head_dim = c, c.dim // c.n_heads
        self.wq = nn.Identity() if c.wq_identity else nn.Linear(c.dim, c.dim, bias=False)
        self.wk = nn.Linear(c.dim, c.dim, bias=False)
        self.wv = nn.Identity() if c.remove_wv else nn.Linear(c.dim, c.dim, bias=False)
        self.wo = nn.Identity() if c.remove_wo else nn.Linear(c.dim, c.dim, bias=False)
        if c.attn_bias:
            self.k_bias = nn.Parameter(torch.randn(1, c.n_heads, 1, self.head_dim) * 0.02)
            self.v_bias = nn.Parameter(torch.randn(1, c.n_heads, 1, self.head_dim) * 0.02)

    def forward(self, x: torch.Tensor, need_probs: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.c.n_heads, self.head_dim).transpose(1, 2)
                   for z in (self.wq(x), self.wk(x), self.wv(x)))
        if self.c.attn_bias:
            k = torch.cat([self.k_bias.expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([self.v_bias.expand(b, -1, -1, -1), v], dim=2)
            mask = attn_bias_mask(t, x.device)
        else:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scale = 1.0 if self.c.no_sqrtd else 1.0 / math.sqrt(self.head_dim)  # one head: 1/sqrt(d), as official
        if need_probs:
            scores = (q @ k.transpose(-2, -1)) * scale
            probs = scores.masked_fill(~mask, float("-inf")).float().softmax(-1).to(x.dtype)
            y = probs @ v
        else:  # training steps: the fused kernel, no (B, T, T) matrices kept
            probs, y = None, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.wo(y.transpose(1, 2).reshape(b, t, d)), probs


def feed_forward(kind: str, dim: int) -> nn.Module | None:
    if kind == "linear":
        return nn.Linear(dim, dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, 4 * dim, bias=False), nn.ReLU(), nn.Linear(4 * dim, dim, bias=False))
    return None


class Block(nn.Module):
    def __init__(self, c: BirthConfig, ffn: str):
        super().__init__()
        self.attention_norm = nn.LayerNorm(c.dim) if c.layernorm else nn.Identity()
        self.attention = Attention(c)
        self.ff = feed_forward(ffn, c.dim)
        self.ffn_norm = nn.LayerNorm(c.dim) if c.layernorm and self.ff is not None else nn.Identity()
        self.parallel = c.block == "parallel"

    def forward(self, x: torch.Tensor, need_probs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, probs = self.attention(self.attention_norm(x), need_probs)
        out = x + h
        if self.ff is not None:
            out = out + self.ff(self.ffn_norm(x if self.parallel else out))
        return out, probs


def sincos_positions(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    return pe


class BirthForCausalLM(PreTrainedModel):
    config_class = BirthConfig
    base_model_prefix = "birth"

    def __init__(self, config: BirthConfig):
        super().__init__(config)
        c = config
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)  # N(0, 1), as the official code
        if c.sqrtd_embeddings:
            self.tok_embeddings.weight.data.normal_(std=1.0 / math.sqrt(c.dim))
        if c.positions == "learned":
            self.pos_embeddings = nn.Embedding(c.n_positions, c.dim)
        else:  # fixed: a buffer saved with the weights (random positions must survive a reload)
            pe = (sincos_positions(c.n_positions, c.dim) if c.positions == "sincos"
                  else torch.randn(c.n_positions, c.dim))
            self.register_buffer("pe", pe / math.sqrt(c.dim) if c.sqrtd_embeddings else pe)
        kinds = [c.first_ffn] + ["none"] * (c.n_layers - 2) + [c.final_ffn] if c.n_layers > 1 else [c.final_ffn]
        self.layers = nn.ModuleList(Block(c, kind) for kind in kinds)
        self.norm = nn.LayerNorm(c.dim) if c.layernorm else nn.Identity()
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        for name, p in self.named_parameters():  # permanently frozen (freeze_until unfreezes others)
            if any(name == f or name.startswith(f + ".") for f in c.frozen):
                p.requires_grad_(False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: PyTorch's own initialisation, as the official code (N(0, 1) embeddings)."""

    def positions(self, t: int) -> torch.Tensor:
        return self.pos_embeddings.weight[:t] if self.config.positions == "learned" else self.pe[:t]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_embeddings

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                output_attentions: bool = False, **_ignored) -> CausalLMOutput:
        t = input_ids.shape[1]
        if t > self.config.n_positions:
            raise ValueError(f"sequence of {t} tokens is longer than the model's {self.config.n_positions} positions")
        h = self.tok_embeddings(input_ids) + self.positions(t)
        attentions = []
        for layer in self.layers:
            h, probs = layer(h, output_attentions)
            attentions.append(probs)
        logits = self.output(self.norm(h)).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, attentions=tuple(attentions) if output_attentions else None)


AutoConfig.register("birth", BirthConfig, exist_ok=True)
AutoModelForCausalLM.register(BirthConfig, BirthForCausalLM, exist_ok=True)
