"""Paper A's GPT-2 variants: one model class with flags (default, sink token, explicit attention
bias), checked on tiny sizes: the k' slot's mask, the sink's missing position, eager = SDPA,
save / load through transformers' Auto classes and the pipeline's loader."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.models.arch import get_arch, layer
from pipeline.models.attention_impl import attention_implementation
from pipeline.models.load import load_model
from pipeline.models.ma_gpt2 import MAGPTConfig, MAGPTForCausalLM, attn_bias_mask
from pipeline.models.tiny import tiny_tokenizer

V, T = 97, 12


def tiny(**flags) -> MAGPTForCausalLM:
    torch.manual_seed(0)
    return MAGPTForCausalLM(MAGPTConfig(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, **flags)).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(seed))


def test_attn_bias_mask_sees_k_prime_and_the_past_only():
    m = attn_bias_mask(4)
    assert m.shape == (4, 5) and m[:, 0].all()
    for t in range(4):  # query t sees k' and real keys 0..t (columns 1..t+1)
        assert m[t, 1:].tolist() == [k <= t for k in range(4)]


@pytest.mark.parametrize("flags", [{}, {"attn_bias": True}, {"sink_tokens": 1}])
def test_causal_and_eager_equals_sdpa(flags):
    model, x = tiny(**flags), ids()
    with torch.no_grad():
        sdpa = model(x).logits
        with attention_implementation(model, "eager"):
            eager = model(x).logits
        y = x.clone()
        y[:, 7:] = (y[:, 7:] + 1) % V  # change the future only
        later = model(y).logits
    assert torch.allclose(sdpa, eager, atol=1e-5)
    assert torch.allclose(later[:, :7], sdpa[:, :7], atol=1e-6) and not torch.allclose(later[:, 7:], sdpa[:, 7:])


@pytest.mark.parametrize("flags", [{}, {"attn_bias": True}, {"sink_tokens": 1}])
def test_sdpa_gets_no_mask_tensor_and_trains_like_the_explicit_mask(flags, monkeypatch):
    """FlashAttention is chosen only without a mask tensor: ``is_causal`` for default / sink, a
    lower-right causal bias object for the k' slot; the loss and every gradient equal the eager
    path's (explicit boolean mask)."""
    import torch.nn.functional as F
    from torch.nn.attention.bias import CausalBias

    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask"))
        F.scaled_dot_product_attention = sdpa  # a bias object dispatches on the real function
        try:
            return sdpa(*args, **kwargs)
        finally:
            F.scaled_dot_product_attention = spy

    def loss_and_grads(model):
        model.zero_grad()
        loss = model(ids(), labels=ids()).loss
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}

    model = tiny(**flags).train()
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    fast_loss, fast = loss_and_grads(model)
    assert seen and all(m is None or isinstance(m, CausalBias) for m in seen)
    with attention_implementation(model, "eager"):
        slow_loss, slow = loss_and_grads(model)
    assert abs(fast_loss - slow_loss) < 1e-6
    assert all(torch.allclose(fast[n], slow[n], atol=1e-6) for n in fast)


def test_the_k_prime_slot_is_attended_and_matters():
    model, x = tiny(attn_bias=True), ids()
    seen = []
    attn = layer(model, 0).attn
    handle = attn.register_forward_hook(lambda _m, _a, out: seen.append(out[1]))
    try:
        with torch.no_grad(), attention_implementation(model, "eager"):
            base = model(x).logits
    finally:
        handle.remove()
    probs = seen[0]
    assert probs.shape == (2, 4, T, T + 1)
    assert (probs[..., 0] > 0).all()  # every query attends to k'
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (probs[..., 1:][..., future] == 0).all()  # and to no future key
    with torch.no_grad():
        attn.v_bias.add_(1.0)
        moved = model(x).logits
    assert not torch.allclose(moved[:, 0], base[:, 0])  # v' reaches even the first query


def test_the_sink_carries_no_position_and_is_dropped_before_the_final_norm():
    model, x = tiny(sink_tokens=1), ids()
    first_block_in, final_in = [], []
    h0 = layer(model, 0).register_forward_pre_hook(lambda _m, a: first_block_in.append(a[0]))
    h1 = model.transformer.ln_f.register_forward_pre_hook(lambda _m, a: final_in.append(a[0]))
    try:
        with torch.no_grad():
            out = model(x).logits
    finally:
        h0.remove()
        h1.remove()
    sink = model.transformer.sink[0, 0]
    assert first_block_in[0].shape[1] == T + 1
    assert torch.equal(first_block_in[0][0, 0], sink) and torch.equal(first_block_in[0][1, 0], sink)
    wte, wpe = model.transformer.wte, model.transformer.wpe
    assert torch.allclose(first_block_in[0][0, 1], wte.weight[x[0, 0]] + wpe.weight[0])  # text keeps positions 0..
    assert final_in[0].shape[1] == T and out.shape == (2, T, V)
    assert get_arch(model).prefix_tokens == (("sink", "sink_tokens"),)


@pytest.mark.parametrize("flags", [{}, {"attn_bias": True}, {"sink_tokens": 1}])
def test_a_checkpoint_loads_like_any_model(tmp_path, flags):
    model, x = tiny(**flags), ids()
    model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    loaded, _tok, _dev = load_model({"name": "ckpt", "source": "local", "path": str(tmp_path / "ckpt"),
                                     "dtype": "float32", "device": "cpu"})
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits) and torch.equal(model(x).logits, loaded(x).logits)
    assert type(again) is MAGPTForCausalLM and again.config.attn_bias == bool(flags.get("attn_bias"))
    assert again.lm_head.weight.data_ptr() == again.transformer.wte.weight.data_ptr()  # tied


def test_interventions_address_the_sink_and_shift_text_roles_past_it():
    """set_sites on the sink variant: role 'sink_1' is hidden-state position 0 and the first text
    token is position 1 (the input_ids index shifted past the sink); on exit nothing remains."""
    from pipeline.interventions.sites import Site, set_sites

    torch.manual_seed(0)
    model = MAGPTForCausalLM(MAGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                         sink_tokens=1)).eval()
    ids = torch.randint(0, 64, (2, 8))
    seen = {}
    probe = layer(model, 1).register_forward_pre_hook(lambda _m, args: seen.__setitem__("h", args[0].clone()))
    with torch.no_grad():
        before = model(ids).logits
        clean = seen["h"]
        with set_sites(model, {0: [Site("sink_1", 3, 0.0), Site("first_token", 5, 7.0)]}, lambda t: False):
            model(ids)
        edited = seen["h"]
        after = model(ids).logits
    probe.remove()
    assert clean.shape[1] == 9 and torch.all(edited[:, 0, 3] == 0) and torch.all(edited[:, 1, 5] == 7.0)
    changed = (edited != clean).nonzero()[:, 1:].unique(dim=0).tolist()
    assert changed == [[0, 3], [1, 5]]  # nothing else was touched
    assert torch.equal(before, after)
    with pytest.raises(Exception, match="reg_1"):
        with set_sites(model, {0: [Site("reg_1", 0, 0.0)]}, lambda t: False):
            pass
