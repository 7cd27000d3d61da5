"""The argument groups several stages share, each defined once (stages inherit them, so the
keys stay flat: ``stage.ma_profile.abs_threshold``)."""

from __future__ import annotations

from dataclasses import dataclass, field

BOS_MODES = ("auto", "never", "first", "every")  # a text's BOS rule (pipeline.data.text.resolve_bos)
DEFAULT_DETECT_PROMPT = "Apple Inc. is a worldwide tech company."  # paper B's analyze.py
FIG1_PROMPT = "Summer is warm. Winter is cold."                    # paper A Fig. 1 / the GPT-2 3-D plot


@dataclass(frozen=True)
class MassiveRule:
    """Paper A §2's definition: |h| > ``abs_threshold`` and > ``rel_threshold`` x the median |h|
    of that layer's hidden state (for that sequence)."""

    abs_threshold: float = 100.0
    rel_threshold: float = 1000.0


@dataclass(frozen=True)
class MassiveSearch(MassiveRule):
    """The rule, plus how many candidates a streaming search keeps."""

    max_hits: int = 1024   # per sequence and layer: candidates kept from a top-k (exact unless exceeded; warned)


@dataclass(frozen=True)
class TokenTypes:
    """How text tokens are labelled: first_token, first_delimiter (the first of these after it), other."""

    delimiters: list[str] = field(default_factory=lambda: [".", "\n"])  # paper A names "." and "\n"


@dataclass(frozen=True)
class EvalProtocol:
    """How the condition stages score a model: perplexity on held-out windows of each dataset,
    then (unless ``eval_suite`` is null) zero-shot accuracy through lm-eval."""

    ppl_data: list[str] = field(default_factory=lambda: ["wiki_summaries"])  # catalog datasets (offline stand-ins)
    ppl_seq_len: int = 512          # paper B follows GPTQ: 2048; paper A: 4096
    ppl_windows: int | str = 4      # a count, "all" (every whole window) or "protocol" (each dataset's own)
    batch_size: int = 1             # perplexity (and calibration) batch
    eval_suite: str | None = "paper_b"   # conf/eval/<suite>; null = perplexity only
    zero_shot_limit: int | None = 20     # documents per task (offline budget); null = all (the papers)
    eval_batch_size: int = 8        # lm-eval batch size


@dataclass(frozen=True)
class SuperWeightDetection:
    """Paper B §3.2's one-prompt detector (:func:`pipeline.analysis.super_weight.detect`)."""

    detect_prompt: str = DEFAULT_DETECT_PROMPT
    roles: list[str] = field(default_factory=lambda: ["creates"])  # which detected weights count as super weights
    # act on the first N of them (found largest spike first); null = all. SmolLM2 has two in layer 11's
    # row 507: 1 removes 73% of the super activation (as LLaMA-7B's one weight, 75%), all of them 99%
    max_weights: int | None = None
    # spike size for input and output; auto = max(min_abs, rel_spike x largest |output|)
    threshold: float | str = "auto"
    rel_spike: float = 0.05
    # input spike: auto = rel_spike x the largest |input| of the pass (its own scale: SmolLM2's second
    # layer-11 super weight has input 1,074, below 5% of the 24,000 output); a number = fixed (paper B: 50)
    in_threshold: float | str = "auto"
    # a super weight is an outlier of its matrix: |w| / std above this; auto = the level a Gaussian of the
    # matrix's std exceeds once in its numel weights (about 5.2 sigma for 2.8M); 0 = no test (paper B's rule)
    min_weight_z: float | str = "auto"
    min_abs: float = 50.0            # paper B's fixed threshold (right for LLaMA-7B's scale)
    min_share: float = 0.5           # one product X[t, col] * W[row, col] must explain this share of Y[t, row]
    max_iter: int = 10
