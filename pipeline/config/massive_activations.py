"""Arguments of paper A's stages (Sun et al. 2024) and of the atlas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import stage_args
from pipeline.config.shared import (
    DEFAULT_DETECT_PROMPT,
    FIG1_PROMPT,
    EvalProtocol,
    MassiveRule,
    MassiveSearch,
    TokenTypes,
)

MMLU_PROMPT = ("The following are multiple choice questions (with answers) about machine learning.\n\n"
               " A 6-sided die is rolled 15 times and the results are: side 1 comes up 0 times;")


@stage_args("ma_profile")
@dataclass(frozen=True)
class MaProfileArgs(MassiveSearch, TokenTypes):
    """§2: per-layer top-k / median of |h| (Table 1, Fig. 3), detection, the Fig. 1 landscape."""

    n_sequences: int = 10          # paper: 10 sequences ...
    seq_len: int = 1024            # ... of 4096 tokens (RedPajama); 1024 keeps the offline default ~1 min on 2 cores
    batch_size: int = 1
    sampling: str = "sequential"   # sequential | random (non-overlapping windows at seeded random offsets)
    fig1_prompt: str = FIG1_PROMPT
    fig1_bos: str = "auto"         # follow the tokenizer; paper A's code tokenized without special tokens (= never)
    fig1_layer: int | str = "auto"  # 0-based decoder layer; auto = where massive activations first appear


@stage_args("ma_intervene")
@dataclass(frozen=True)
class MaInterveneArgs(EvalProtocol, MassiveSearch, TokenTypes):
    """§3 (Table 3): set the massive activations to zero / their mean / zero as many random ones."""

    conditions: list[str] = field(default_factory=lambda: ["original", "set_zero", "set_mean", "random_zero"])
    layer: int | str = "auto"      # 0-based; auto = first layer with steady massive activations (detected)
    calib_data: str = "wiki_summaries"   # detection and mean values (paper: 100 RedPajama sequences)
    calib_split: str = "train"     # never the evaluation split
    calib_sequences: int = 20
    calib_seq_len: int = 512
    min_frac: float = 0.5          # a (dim, token type) is edited if massive in >= this share of calibration sequences
    seed: int = 0                  # random_zero's choice of dims


@stage_args("ma_attention")
@dataclass(frozen=True)
class MaAttentionArgs(MassiveRule, TokenTypes):
    """§4: attention on the massive tokens and the attention-output decomposition (implicit bias)."""

    prompt: str = MMLU_PROMPT      # paper A exp4 (official main_llm.py): the MMLU machine-learning prompt
    layers: Any = "auto"           # 0-based layers for the heat maps and the decomposition: a list, an index,
                                   # auto (after the massive layer, the middle one, the last) or after_massive
    decomp_layers: Any = "layers"  # "layers" (the same), auto, after_massive, or 0-based indices
    prompt_bos: str = "auto"       # follow the tokenizer (run.bos overrides); paper A's code: never


@stage_args("vit_profile")
@dataclass(frozen=True)
class VitProfileArgs(MassiveSearch):
    """§5 on a vision encoder: per-block top-k / median over the images, massive activations by role."""

    n_images: int = 12
    batch_size: int = 4
    landscape_layer: int | str = "auto"  # auto: the first block of a steady massive activation, else the largest ratio
    landscape_patches: int = 12    # the patches with the largest |h| shown beside the prefix tokens


@stage_args("vit_intervene")
@dataclass(frozen=True)
class VitInterveneArgs(MassiveSearch):
    """§5: set-to-zero / set-to-mean and Fix-Reg-Mean, scored by proxies offline (see the stage)."""

    conditions: list[str] = field(default_factory=lambda: ["original", "set_zero", "set_mean", "fix_reg_mean"])
    eval_images: int = 6           # the first images of the run's image set
    calib_images: int = 6          # the next ones, for the means (disjoint from evaluation)
    calib_views: int = 8           # augmented views per calibration image (paper A: 10k ImageNet-train images)
    batch_size: int = 8
    probe_images: int = 400        # scikit-learn digits: half fit the probe, half score each condition; 0: off
    seed: int = 0


@stage_args("atlas")
@dataclass(frozen=True)
class AtlasArgs(MassiveSearch, TokenTypes):
    """One row per model: where massive activations first appear, and its super weights."""

    n_inputs: int = 4              # text windows (or images) measured
    seq_len: int = 256
    image_data: str = "skimage_photos"   # the image set of a vision encoder
    detect_prompt: str = DEFAULT_DETECT_PROMPT   # paper B's detector prompt
