"""Arguments of paper B's stages (Yu et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import stage_args
from pipeline.config.shared import EvalProtocol, MassiveRule, SuperWeightDetection


@stage_args("sw_detect")
@dataclass(frozen=True)
class SwDetectArgs(SuperWeightDetection, MassiveRule):
    """§3.2 (Fig. 3, Table 2): one prompt, no data; the massive rule cross-checks the rows."""


@stage_args("sw_ablate")
@dataclass(frozen=True)
class SwAblateArgs(EvalProtocol, SuperWeightDetection):
    """Table 1 and Fig. 4: prune the super weights, prune but restore the super activation, prune
    the largest other weights instead. The detection prompt is also Fig. 4's input."""

    conditions: list[str] = field(
        default_factory=lambda: ["original", "prune_sw", "prune_sw_restore_sa", "prune_non_sw"])
    non_sw_fraction: float = 1.0e-6   # paper B: top 1e-6 of every attention/MLP matrix (~7,000 on LLaMA-7B)
    non_sw_min_per_matrix: int = 1    # int(1e-6 * numel) is 0 on small models: at least this many per matrix


@stage_args("sw_scale")
@dataclass(frozen=True)
class SwScaleArgs(EvalProtocol, SuperWeightDetection):
    """§5, Fig. 6 / Fig. 8 and Table 5: the super weights multiplied by each factor."""

    scales: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0])


@stage_args("sw_stopwords")
@dataclass(frozen=True)
class SwStopwordsArgs(SuperWeightDetection):
    """§3.3, Fig. 5 and the case study: LAMBADA next-token distributions with and without the super weights."""

    n_prompts: int = 500           # paper B: the first 500 LAMBADA (OpenAI) texts
    top_k: int = 20                # table = top-k of the original distribution + top-k of the pruned one (union)
    case_prompt: str = "Summer is hot. Winter is"   # paper B §3.3 case study
    case_target: str = " cold"
    batch_size: int = 8            # prompts per forward, LEFT-padded (equal to one by one up to rounding; tested)
    add_special_tokens: bool = True   # tokenizer defaults, as paper B's code (LLaMA: BOS; SmolLM2 adds none)


@stage_args("sw_weightquant")
@dataclass(frozen=True)
class SwWeightquantArgs(EvalProtocol, SuperWeightDetection):
    """§5.2, Fig. 7 and Table 6: INT4 round-to-nearest per block, plain vs clip + restore."""

    # paper B's 128^2 ... 1024^2
    block_sizes: list[int] = field(default_factory=lambda: [16384, 65536, 262144, 1048576])
    methods: list[str] = field(default_factory=lambda: ["rtn", "rtn_clip_restore"])
    bits: int = 4
    tile: list[int] | None = None  # [rows, cols] = 2-D tiles instead of contiguous blocks (block_sizes then ignored)
    z: float | None = None         # fixed clip z for rtn_clip_restore; null = chosen per block size from z_grid
    z_grid: list[float] = field(default_factory=lambda: [3, 4, 6, 8, 10, 15, 20, 30, 50, 100, float("inf")])
    calib_data: str = "wiki_summaries"   # z search: layer-output reconstruction error on held-in text
    calib_split: str = "train"     # paper B: 500 WikiText-2 train examples
    calib_seq_len: int = 256
    calib_windows: int = 4
    calib_max_tokens: int | None = 2048  # input rows kept per linear for the z search
    sw_scales: list[float] = field(default_factory=lambda: [1.0])   # Table 6: super weights amplified (1 = plain)
    clip: str = "official"         # z clip per block on |w| (official code) | text: the tensor's signed mean +- z std
    ragged: str = "short_last_block"  # a block size that does not divide a matrix; per_tensor = the official code
    include_original: bool = True  # the unquantized model as the first row


@stage_args("sw_actquant")
@dataclass(frozen=True)
class SwActquantArgs(EvalProtocol, SuperWeightDetection):
    """§5.1, Tables 3, 4 and 7: simulated W8A8, fp / naive / super-activation aware / SmoothQuant."""

    conditions: list[str] = field(default_factory=lambda: ["fp", "naive", "super_activation_aware", "smoothquant"])
    alpha: float = 0.85            # SmoothQuant migration strength (paper B)
    smooth_down_proj: bool = False  # also smooth down_proj's input via up_proj rows (the reference code does not)
    parts: list[str] = field(default_factory=lambda: ["weights", "inputs", "attention"])  # what W8A8 quantizes
    # paper_b: paper B's text (weights per tensor, q/k/v/gate/up/down inputs per token, attention BMM inputs);
    # smoothquant: SmoothQuant's quantize_llama_like (weights per output channel, o_proj too, q/k/v outputs)
    protocol: str = "paper_b"
    activations: str = "per_token"   # per_tensor: one scale per input tensor (the super activation's large case)
    calib_data: str = "wiki_summaries"   # SmoothQuant's per-channel input maxima (never the evaluation split)
    calib_split: str = "train"
    calib_seq_len: int = 256
    calib_windows: int = 4
