"""Paper C's metrics and probes (Bietti et al. 2023 §4-5; the official ``ihead_basic_main.py``
logs the same names), each a function of a batch or of the weights alone.

Batch metrics (:func:`batch_metrics`; ``x`` inputs, ``y`` targets, ``counter`` of each target:
0 bigram token, 1 first occurrence of a trigger's output, >= 2 predictable by induction):
  loss, loss_bigram (counter 0), loss_head (counter >= 2); acc_tot (counter >= 1), acc_start
  (counter >= 1 in the first 10 positions), acc_end (counter >= 2);
  score_acc / score_start_acc: at an output position, layer 1's argmax attention is the previous
  token (all outputs / first occurrences); score2_acc: layer 2's argmax attends to a token whose
  predecessor is the current token (the induction pattern), divided by all counter >= 2 queries;
  pred_attended_acc: the token layer 2 attends to is the prediction; score_cond_acc: layer 1, at the
  key layer 2 attends to, attends to that key's previous token; repeat_frac: outputs equal to their
  trigger (counter >= 1). With several heads, the best head (pair) is reported.
Memory-recall probes (:func:`memory_probes`, from the weights: each matrix as an associative memory):
  wk0 / wk0_64: the positional previous-token recall argmax_s p_t^T W_K1 p_s == t - 1, over all
  positions / the first 64; wk1: the trigger recall argmax_j w_E(i)^T W_Q2 W_K2 W_O1 W_V1 w_E(j)
  == i over the triggers (fixed) or all tokens; wo1: the output recall argmax_k w_U(k)^T W_O2 W_V2
  w_E(j) == j over the training output ids; ff1_loss: KL(pi_b || softmax(W_U W_F w_E)) over
  non-trigger tokens, when the last layer has a (linear) FFN.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

START_WINDOW = 10  # acc_start: the first 10 positions (official ``sl``)


def _acc(pred: torch.Tensor, y: torch.Tensor, where: torch.Tensor) -> float:
    return float((pred[where] == y[where]).float().mean()) if bool(where.any()) else float("nan")


def _ce(logits: torch.Tensor, y: torch.Tensor, where: torch.Tensor) -> float:
    return float(F.cross_entropy(logits[where], y[where])) if bool(where.any()) else float("nan")


def batch_metrics(logits: torch.Tensor, attentions: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor,
                  counter: torch.Tensor, offset: int = 0) -> dict[str, float]:
    """The official per-batch metrics. ``offset`` = positions before the text (a start token):
    they are cut from the logits and the attention maps before anything is measured, as is an
    explicit k'/v' slot (the first key column when keys outnumber queries)."""
    attentions = tuple(a[..., a.shape[-1] - a.shape[-2]:] for a in attentions)
    if offset:
        logits = logits[:, offset:]
        attentions = tuple(a[..., offset:, offset:] for a in attentions)
    pred = logits.argmax(-1)
    out = {"loss_all": _ce(logits, y, torch.ones_like(y, dtype=torch.bool)),
           "loss_bigram": _ce(logits, y, counter == 0), "loss_head": _ce(logits, y, counter >= 2),
           "acc_tot": _acc(pred, y, counter >= 1), "acc_end": _acc(pred, y, counter >= 2)}
    early = torch.zeros_like(counter, dtype=torch.bool)
    early[:, :START_WINDOW] = True
    out["acc_start"] = _acc(pred, y, (counter >= 1) & early)
    # Attention probes per head; with several heads (the full model) the best head is reported:
    # the one that became the previous-token / induction head (one head: the official probe).
    # layer 1: at the position after a trigger (its output is the target there), attend to t - 1
    amax1 = attentions[0].argmax(-1)  # (B, H, T)
    for name, sel in (("score_acc", counter[:, :-1] >= 1), ("score_start_acc", counter[:, :-1] == 1)):
        b, t = torch.where(sel)
        out[name] = (float((amax1[b, :, t + 1] == t[:, None]).float().mean(0).max()) if len(b) else float("nan"))
    # layer 2: a query predictable by induction attends to a key whose predecessor is the query token
    b, t = torch.where(counter >= 2)
    if len(b):
        amax2 = attentions[1][b, :, t].argmax(-1)  # (n, H)
        ok = (amax2 >= 1) & (x[b[:, None], (amax2 - 1).clamp(min=0)] == x[b, t][:, None])
        out["score2_acc"] = float(ok.float().sum(0).max()) / len(b)
        # the token layer 2 attends to is the one predicted (official pred_attended_acc)
        out["pred_attended_acc"] = float((x[b[:, None], amax2] == pred[b, t][:, None]).float().mean(0).max())
        # layer 1 at the key layer 2 attends to looks at its previous token (official score_cond_acc):
        # per pair of heads (layer 1, layer 2), over the queries whose layer-2 key is not position 0
        valid = amax2 >= 1  # (n, H2)
        h1 = torch.arange(amax1.shape[1], device=amax1.device)
        cond = amax1[b[:, None, None], h1[None, :, None], amax2[:, None, :]] == (amax2 - 1)[:, None, :]  # (n, H1, H2)
        frac = (cond & valid[:, None, :]).float().sum(0) / valid.float().sum(0).clamp(min=1)
        out["score_cond_acc"] = float(frac.max()) if bool(valid.any()) else float("nan")
    else:
        out["score2_acc"] = out["pred_attended_acc"] = out["score_cond_acc"] = float("nan")
    # how often a trigger's output repeats the trigger itself (official repeat_frac)
    out["repeat_frac"] = float((x == y)[counter >= 1].float().mean()) if bool((counter >= 1).any()) else float("nan")
    return out


@torch.no_grad()
def memory_probes(model: torch.nn.Module, *, triggers: np.ndarray | None, n_train_tokens: int,
                  bigram: np.ndarray | None = None) -> dict[str, float]:
    """The four memory-recall probes (and ``ff1_loss`` when the last layer has a linear FFN) of a
    :class:`pipeline.models.birth.BirthForCausalLM`, from its weights alone."""
    emb, unemb = model.tok_embeddings, model.output
    l1, l2 = model.layers[0].attention, model.layers[-1].attention
    dev = emb.weight.device
    pe = model.positions(model.config.n_positions)

    def wk0(cutoff: int | None) -> float:
        p = pe[:cutoff]
        scores = l1.wq(p[1:]) @ l1.wk(p[:-1]).T  # query t (1..), key s (..T-2): recall s = t - 1
        return float((scores.argmax(-1) == torch.arange(len(p) - 1, device=dev)).float().mean())

    toks = (torch.as_tensor(triggers, device=dev) if triggers is not None
            else torch.arange(emb.num_embeddings, device=dev))
    keys = l2.wk(l1.wo(l1.wv(emb(toks))))
    queries = l2.wq(emb(toks))
    wk1 = float(((queries @ keys.T).argmax(-1) == torch.arange(len(toks), device=dev)).float().mean())
    train_ids = torch.arange(n_train_tokens, device=dev)
    wo1 = float((unemb(l2.wo(l2.wv(emb(train_ids)))).argmax(-1) == train_ids).float().mean())
    out = {"wk0": wk0(None), "wk0_64": wk0(64), "wk1": wk1, "wo1": wo1, "ff1_loss": float("nan")}
    ff = model.layers[-1].ff
    if isinstance(ff, torch.nn.Linear) and bigram is not None:
        used = np.setdiff1d(np.arange(len(bigram)), triggers) if triggers is not None else np.arange(len(bigram))
        logits = unemb(ff(emb(torch.as_tensor(used, device=dev))))
        target = torch.as_tensor(bigram[used], dtype=logits.dtype, device=dev)
        out["ff1_loss"] = float(F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean"))
    return out


def first_crossing(rows: list[dict], key: str, level: float) -> int | None:
    """The first logged step at which ``key`` reaches ``level`` (None: never)."""
    return next((int(r["step"]) for r in rows if r.get(key) is not None and r[key] >= level), None)
