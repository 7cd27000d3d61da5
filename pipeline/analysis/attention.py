"""Attention probabilities, values and the attention-output decomposition (paper A §4).

Paper A (Sun et al. 2024) §4 shows that after the layer where massive activations appear, heads
concentrate their attention on the massive-activation tokens (the attention figures of LLaMA2-7B,
layer 3), and that the value update those tokens contribute is nearly the same for every query:
an implicit attention bias. The pieces here are model-agnostic and reused by the stage
``ma_attention``:

- :func:`eager_attention`: switch a transformers model to eager attention (the only one that
  returns the probabilities) and restore the previous implementation on exit, also on errors.
- :func:`capture_attention_weights`: a temporary hook handing element 1 of each attention
  module's output, the probabilities (B, H, T, T), to an observer.
- :func:`attention_share`, :func:`control_share`, :func:`uniform_share`: how much attention
  mass lands on a key set S.
- :func:`expand_kv_heads`, :func:`decompose_output`, :func:`constancy`: the decomposition of the
  attention output into the part from S and the rest, and how constant each part is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import capture
from pipeline.models.arch import get_arch, layer, resolve
from pipeline.models.attention_impl import attention_implementation


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the body with eager attention (the only one that returns the probabilities); on exit
    every config of the model gets back exactly the implementation it had before.

    Eager and SDPA attention compute the same function, so only the numerics of the body change;
    the model after the block is the same object in the same state (test_ma_attention checks the
    logits are bit-identical).
    """
    with attention_implementation(model, "eager"):
        yield


@contextmanager
def capture_attention_weights(
    modules: Mapping[str, nn.Module], fn: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``fn(name, probs)`` with each attention module's probabilities (B, H, T, T).

    transformers 5 attention modules return ``(output, weights)``; ``weights`` is None unless the
    attention implementation is eager (use :func:`eager_attention`), which is a clear error here.
    The hook is an observer (returns None): the model's output is untouched.
    """
    def on_output(name: str, out: Any) -> None:
        weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
        if not isinstance(weights, torch.Tensor):
            raise PipelineError(f"attention module '{name}' returned no attention weights; run the forward "
                                "inside pipeline.analysis.attention.eager_attention(model)")
        fn(name, weights)

    with capture(modules, on_output, whole_output=True):
        yield


def attention_site(model: nn.Module, i: int, which: str) -> nn.Module | None:
    """The ``v_proj`` or ``o_proj`` Linear of decoder layer ``i``; None if the ArchSpec has none
    or it is stored (in, out) (GPT-2's Conv1D: the decomposition reads (out, in) weights)."""
    spec = get_arch(model)
    path = getattr(spec, which)
    if path is None or spec.weights_in_out:
        return None
    found = resolve(layer(model, i), path, spec.model_type)
    if not isinstance(found, nn.Linear):
        raise PipelineError(f"'{path}' in the {spec.model_type} model is a {type(found).__name__}, "
                            "not a Linear; fix its ArchSpec in pipeline/models/arch.py")
    return found


def _queries(n: int, keys: Sequence[int]) -> range:
    return range(min(keys) + 1, n)


def attention_share(probs: torch.Tensor, keys: Sequence[int]) -> float:
    """Share of attention mass on the key set S: for each query i > min(S), sum_{j in S} p^h_ij,
    averaged over heads h and over those queries. ``probs`` (H, T, T), rows summing to 1.

    Queries i <= min(S) are left out: they cannot see S (i < min S) or see only it (i = min S).
    Returns NaN if no query is left.
    """
    queries = list(_queries(probs.shape[-1], keys))
    if not queries:
        return math.nan
    mass = probs[:, queries][:, :, list(keys)].double().sum(-1)  # (H, Q)
    return float(mass.mean())


def control_share(probs: torch.Tensor, keys: Sequence[int]) -> float:
    """The same share for a uniform-random control: the expected mass on k = |S| key positions
    drawn uniformly from the keys query i can see outside S, {j <= i, j not in S} (n_i of them):
    E = min(k, n_i) / n_i * sum_{j visible, not in S} p_ij; averaged like :func:`attention_share`.
    Exact expectation, no sampling."""
    n = probs.shape[-1]
    k, s = len(keys), set(keys)
    vals = []
    for i in _queries(n, keys):
        others = [j for j in range(i + 1) if j not in s]
        if others:
            mass = probs[:, i, others].double().sum(-1)  # (H,)
            vals.append(min(k, len(others)) / len(others) * mass)
    return float(torch.stack(vals).mean()) if vals else math.nan


def slot_shares(probs: torch.Tensor, n_prefix: int = 0) -> dict[str, float]:
    """Mean attention of ``probs`` (..., queries, keys) on the explicit k' slot (the first key
    columns when keys outnumber queries), on the ``n_prefix`` prefix tokens (a sink), and on the
    first text token (from the queries after it); NaN for what the model does not have."""
    extra = probs.shape[-1] - probs.shape[-2]
    nan = float("nan")
    return {"kprime": float(probs[..., :extra].sum(-1).mean()) if extra else nan,
            "sink": float(probs[..., extra:extra + n_prefix].sum(-1).mean()) if n_prefix else nan,
            "first": float(probs[..., n_prefix + 1:, extra + n_prefix].mean())}


def uniform_share(n: int, keys: Sequence[int]) -> float:
    """The share S would get if every query attended uniformly to the keys it can see."""
    vals = [sum(j <= i for j in keys) / (i + 1) for i in _queries(n, keys)]
    return sum(vals) / len(vals) if vals else math.nan


def head_mean_logprobs(probs: torch.Tensor) -> torch.Tensor:
    """mean_h log p^h_ij (T, T) from ``probs`` (H, T, T): paper A plots head-averaged logits, and
    log p = logit - logsumexp_j(logit) differs from them by a per-query constant only. Zeros
    (masked or underflowed entries) are clamped to float32's smallest normal (log = -87.3)."""
    tiny = torch.finfo(torch.float32).tiny
    return probs.float().clamp_min(tiny).log().mean(0)


def expand_kv_heads(v: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Values (T, KV * head_dim) -> (T, H, head_dim), each KV head repeated for its group of
    query heads. transformers' ``repeat_kv`` expands (B, KV, T, d) to (B, KV, n_rep, T, d) and
    reshapes, i.e. query head h uses KV head h // n_rep: ``repeat_interleave`` order."""
    t = v.shape[0]
    kv = v.reshape(t, -1, head_dim)
    if n_heads % kv.shape[1]:
        raise PipelineError(f"{n_heads} query heads are not a multiple of {kv.shape[1]} KV heads")
    return kv.repeat_interleave(n_heads // kv.shape[1], dim=1)


def decompose_output(probs: torch.Tensor, values: torch.Tensor, weight: torch.Tensor,
                     keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the attention output of every query into the part from the key set S and the rest.

    ``probs`` (H, T, T), ``values`` (T, H, d) (KV heads already expanded), ``weight`` the output
    projection's (D, H * d). Per head the output before the projection is
    z^h_i = sum_j p^h_ij v^h_j; heads are concatenated head-major and projected. Returns
    ``(part_S, part_rest)``, each (T, D), with part_S + part_rest = W z (no bias in either part).
    Computed in float64.
    """
    p, v, w = probs.double(), values.double(), weight.double()
    in_s = torch.zeros(p.shape[-1], dtype=torch.bool, device=p.device)
    in_s[list(keys)] = True
    parts = []
    for mask in (in_s, ~in_s):
        z = torch.einsum("hij,jhd->ihd", p * mask, v)  # (T, H, d)
        parts.append(z.reshape(z.shape[0], -1) @ w.T)
    return parts[0], parts[1]


def constancy(x: torch.Tensor) -> tuple[float, float]:
    """How constant the rows of ``x`` (N, D) are: the mean pairwise cosine similarity over pairs
    i != i', and the relative variance mean_i |x_i - mean x|^2 / mean_i |x_i|^2 (0 = constant)."""
    x = x.double()
    n = x.shape[0]
    if n < 2:
        return math.nan, math.nan
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (float((unit @ unit.T).sum()) - float((unit * unit).sum())) / (n * (n - 1))
    rel_var = float((x - x.mean(0)).pow(2).sum(1).mean() / x.pow(2).sum(1).mean().clamp_min(1e-300))
    return cos, rel_var
