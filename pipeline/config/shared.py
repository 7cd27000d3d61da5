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
    # spike size for input and output; auto = max(min_abs, rel_spike x largest |output|)
    threshold: float | str = "auto"
    rel_spike: float = 0.05
    min_abs: float = 50.0            # paper B's fixed threshold (right for LLaMA-7B's scale)
    min_share: float = 0.5           # one product X[t, col] * W[row, col] must explain this share of Y[t, row]
    max_iter: int = 10
