"""Paper C's models against the official code's own outputs (results/reference/birth_official/,
written by scripts/birth_official_reference.py from a checkout of albietz/transformer-birth): the
official weights loaded into our classes, as configured in conf/model/, give the official logits.
The full model's default block must be the official parallel one. And the official training
script's logged probes (acc_end ... wk1, ff1_loss, acc_end_test) are what our probe functions give
on the weights and batch that script logged them from."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.models.birth import BirthConfig, BirthForCausalLM
from tests.helpers import ROOT

REF = ROOT / "results" / "reference" / "birth_official"
RENAME = {".ff.w1.": ".ff.0.", ".ff.w2.": ".ff.2.", ".ff_norm.": ".ffn_norm."}  # official -> ours


def ours(model_yaml: str, **change) -> BirthForCausalLM:
    """Our class as ``conf/model/<model_yaml>.yaml`` configures it, at the reference's sizes
    (``change`` overrides any of them)."""
    meta = json.loads((REF / "meta.json").read_text())
    init = yaml.safe_load((ROOT / "conf" / "model" / f"{model_yaml}.yaml").read_text())["init"]
    init.update({"dim": meta["dim"], "n_positions": meta["length"], "vocab_size": meta["vocab_size"], **change})
    return BirthForCausalLM(BirthConfig(**init)).eval()


def official(name: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    ref = load_file(str(REF / f"{name}.safetensors"))
    weights = {}
    for key, value in ref.items():
        if key.startswith("weight."):
            key = key.removeprefix("weight.")
            for a, b in RENAME.items():
                key = key.replace(a, b)
            weights[key] = value
    return weights, ref["tokens"], ref["logits"]


def loaded(model: BirthForCausalLM, weights: dict) -> BirthForCausalLM:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return model


def logits_with(model: BirthForCausalLM, weights: dict, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded(model, weights)(tokens).logits


@pytest.mark.parametrize("name,model_yaml,change,tol", [
    ("full", "birth_full", {}, 1e-6),  # measured 6.0e-7
    ("simplified", "birth_simplified", {"final_ffn": "linear"}, 2e-6),  # Fig. 4's final linear FFN; 9.5e-7
])
def test_our_models_give_the_official_logits_from_the_official_weights(name, model_yaml, change, tol):
    weights, tokens, expected = official(name)
    got = logits_with(ours(model_yaml, **change), weights, tokens)
    assert (got - expected).abs().max() < tol, float((got - expected).abs().max())
    assert expected.abs().max() > 1.0  # not a degenerate reference


def test_the_sequential_block_is_not_the_official_full_model():
    """The project's earlier block (FFN after attention) differs from the official one by far more
    than rounding: the guard above would have caught it."""
    weights, tokens, expected = official("full")
    got = logits_with(ours("birth_full", block="sequential"), weights, tokens)
    assert (got - expected).abs().max() > 1e-3


def official_probe_run() -> tuple[dict, dict, dict[str, torch.Tensor]]:
    ref = json.loads((REF / "probes.json").read_text())
    return ref["setting"], ref["official"], load_file(str(REF / "probes.safetensors"))


def simplified_at(tensors: dict[str, torch.Tensor], when: str) -> BirthForCausalLM:
    """The official simplified model's weights ``before`` or ``after`` the logged step's update, in
    our class (buffers such as the fixed positions do not change: taken from ``after``)."""
    state = {k.removeprefix("after."): v for k, v in tensors.items() if k.startswith("after.")}
    state.update({k.removeprefix(f"{when}."): v for k, v in tensors.items() if k.startswith(f"{when}.")})
    vocab, dim = state["tok_embeddings.weight"].shape
    model = ours("birth_simplified", dim=dim, n_positions=tensors["x"].shape[1], vocab_size=vocab,
                 final_ffn="linear")
    return loaded(model, state)


# official name -> ours, each compared to 6 decimals (the official values are float32 means)
BATCH_PROBES = {"loss_head": "loss_head", "loss_bigram": "loss_bigram", "acc_tot": "acc_tot",
                "acc_start": "acc_start", "acc_end": "acc_end", "score_acc": "score_acc",
                "score_start_acc": "score_start_acc", "score2_acc": "score2_acc", "score_cond_acc": "score_cond_acc",
                "pred_attended_acc": "pred_attended_acc", "repeat_frac": "repeat_frac"}
MEMORY_PROBES = {"wk0_acc": "wk0", "wk0_64_acc": "wk0_64", "wk1_acc": "wk1", "wo1_acc": "wo1", "ff1_loss": "ff1_loss"}


def test_our_probes_give_the_official_values_on_the_official_run():
    """All of paper C's logged probes, recomputed by pipeline.analysis.induction from the weights
    and batch of the official script's own run, equal what that script logged."""
    from pipeline.analysis.induction import batch_metrics, memory_probes

    setting, official, t = official_probe_run()
    x, y, counter = (t[k].long() for k in ("x", "y", "outs"))
    with torch.no_grad():
        out = simplified_at(t, "before")(input_ids=x, output_attentions=True)
        ours_batch = batch_metrics(out.logits, out.attentions, x, y, counter)
        after = simplified_at(t, "after")
        ours_memory = memory_probes(after, triggers=np.array(setting["fixed_triggers"]),
                                    n_train_tokens=setting["n_train_tokens"], bigram=t["bigram"].double().numpy())
        xt, yt, ct = (t[k].long() for k in ("x_test", "y_test", "outs_test"))
        test_out = after(input_ids=xt, output_attentions=True)
        ours_test = batch_metrics(test_out.logits, test_out.attentions, xt, yt, ct)["acc_end"]
    got = {**{o: ours_batch[k] for o, k in BATCH_PROBES.items()},
           **{o: ours_memory[k] for o, k in MEMORY_PROBES.items()}, "acc_end_test": ours_test}
    assert set(got) | {"iter", "loss"} >= {k for k in official if not k.startswith(("norm_", "gradnorm_"))}
    wrong = {k: (got[k], official[k]) for k in got if abs(got[k] - official[k]) > 1e-6}
    assert not wrong, wrong
    assert 0.05 < official["acc_end"] < 0.95 and official["wk1_acc"] > 0  # not a degenerate reference
