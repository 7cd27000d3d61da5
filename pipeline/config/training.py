"""The one training config (:class:`TrainConfig`, what :func:`pipeline.train.loop.train` reads)
and the two training stages' arguments, which *are* a TrainConfig plus their own fields: one name
per knob from the YAML to the loop, no repacking."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import stage_args
from pipeline.config.shared import FIG1_PROMPT, MassiveRule
from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class TrainConfig:
    """nanoGPT's knobs. ``decay_steps`` / ``min_lr`` null: ``steps`` / ``lr`` (a constant rate)."""

    steps: int = 300
    micro_batch: int = 8           # sequences per forward
    grad_accum: int = 1            # micro-batches per optimizer step over ALL ranks (nanoGPT: 40 = 5 per GPU x 8)
    block_size: int = 256          # tokens per sequence
    optimizer: str = "adamw"       # adamw | sgd
    lr: float = 1.0e-3
    min_lr: float | None = 1.0e-4  # cosine floor; null = lr (constant)
    warmup_steps: int = 30
    decay_steps: int | None = None  # cosine from lr to min_lr over these steps; null = steps (paper A: 600k)
    weight_decay: float = 0.1      # on every parameter with dim >= 2 (as nanoGPT / paper A)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.9          # sgd only
    grad_clip: float = 1.0         # 0: off
    eval_every: int = 25
    ckpt_every: int = 50
    eval_at_start: bool = False    # also evaluate the initial model (step 0; paper C logs iteration 0)
    save_at_end: bool = True       # false only for benchmarks timing the steps alone
    freeze_until: list[str] = field(default_factory=list)  # ["300:<parameter prefix>"]: frozen before step 300
    decay: str = "matrices"        # weight decay on: matrices (dim >= 2, nanoGPT) | all (paper C's official code)
    precision: str = "bf16"        # on CUDA: bf16 autocast for training and evaluation | fp32; CPUs: fp32
    tf32: bool = True              # on CUDA: TensorFloat-32 matmuls (nanoGPT); false for exact fp32
    compile: bool = False          # torch.compile the training forward (inductor; minutes to compile)

    def __post_init__(self) -> None:  # the config alone decides: one line before anything loads
        for name, allowed in (("optimizer", ("adamw", "sgd")), ("decay", ("matrices", "all")),
                              ("precision", ("bf16", "fp32"))):
            if getattr(self, name) not in allowed:
                raise PipelineError(f"{name}={getattr(self, name)!r}: one of {', '.join(allowed)}")

    @property
    def decay_over(self) -> int:
        return self.decay_steps or self.steps

    @property
    def lr_floor(self) -> float:
        return self.lr if self.min_lr is None else self.min_lr


@stage_args("train_lm")
@dataclass(frozen=True)
class TrainLmArgs(TrainConfig, MassiveRule):
    """Paper A §4.3: train the run's model from scratch and record the emergence curve."""

    eval_batches: int = 4          # validation batches (fixed: the same every evaluation)
    profile_sequences: int = 4     # validation sequences profiled for massive activations
    data: list[str] = field(default_factory=lambda: ["wiki_summaries", "shakespeare", "austen"])  # corpora
    checkpoint_dir: str | None = None   # null: outputs/checkpoints/<experiment>/<run key>/{last,final}
    landscape_prompt: str = FIG1_PROMPT  # paper A's GPT-2 3-D plot (analyze.py)
    landscape_layer: int | str = "auto"  # auto: paper A's relative depth, layer 6 of 12 -> index round(n/2) - 1


@stage_args("birth_train")
@dataclass(frozen=True)
class BirthTrainArgs(TrainConfig, MassiveRule):
    """Paper C: the bigram task with triggers on the simplified or full 2-layer model (the official
    README setting: SGD 0.03, batch 512, loss on counter >= 2, 400 iterations)."""

    steps: int = 400
    micro_batch: int = 512         # sequences per step (the official batch size)
    block_size: int = 256          # T
    optimizer: str = "sgd"
    lr: float = 0.03
    min_lr: float | None = None    # constant learning rate (official)
    warmup_steps: int = 0
    weight_decay: float = 1.0e-4
    decay: str = "all"             # the official optimizer decays every parameter (LayerNorm included)
    precision: str = "fp32"        # the official code trains in fp32 on GPUs too
    tf32: bool = False
    grad_clip: float = 0.0
    eval_every: int = 5            # official eval_delta
    eval_at_start: bool = True
    loss_head_only: bool = True    # the loss on counter >= 2 targets only (Fig. 3); false: every token
    k: int = 5                     # triggers
    fixed_triggers: bool = True    # the K most frequent characters; false: random per sequence
    outputs: str = "uniform"       # uniform | bigram (pi_b(.|q))
    test_outputs: str | None = None  # acc_end_test's outputs (null: as training)
    ood: bool = False              # true: train outputs from ids < 0.75 N, acc_end_test on the rest
    no_repeat: bool = False
    bos: bool = False              # a start token at position 0 (needs model.tokenizer.bos=true, max_length T + 1)
    attention_positions: int = 64  # Fig. 2: the first positions of one held-out sequence
    test_sequences: int = 512      # the fixed held-out batch (official x_test: 512 sequences, rng 0)
    checkpoint_dir: str | None = None
    label: str = "default"         # names the run in the tables and figures (set by the variant group)
