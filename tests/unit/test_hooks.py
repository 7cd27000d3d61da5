import pytest
import torch

from pipeline.hooks.forward import as_tensor, capture, patch, with_tensor
from pipeline.models.arch import decoder_layers, layer
from tests.helpers import tiny


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_observing_leaves_logits_bit_identical(arch):
    model, _ = tiny(arch)
    ids = torch.randint(0, 300, (2, 24))
    before = _logits(model, ids)
    seen = {}
    mods = {str(i): m for i, m in enumerate(decoder_layers(model))}
    with capture(mods, lambda n, h: seen.__setitem__(n, h.shape)):
        during = _logits(model, ids)
    after = _logits(model, ids)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert set(seen) == set(mods) and all(s[-1] == 64 for s in seen.values())


def test_hooks_removed_on_exception():
    model, _ = tiny()
    mod = layer(model, 1)
    with pytest.raises(RuntimeError, match="boom"), capture({"x": mod}, lambda n, h: None):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), patch({"x": mod}, lambda n, h: h * 0):
        raise RuntimeError("boom")
    assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_patch_edits_then_restores():
    model, _ = tiny()
    ids = torch.randint(0, 300, (1, 16))
    before = _logits(model, ids)
    with patch({"l1": layer(model, 1)}, lambda n, h: h * 0):
        edited = _logits(model, ids)
    assert not torch.equal(before, edited)
    assert torch.equal(before, _logits(model, ids))


def test_capture_inputs_sees_module_input():
    model, _ = tiny()
    got = {}
    down = layer(model, 0).mlp.down_proj
    with capture({"d": down}, lambda n, x: got.__setitem__(n, x.shape), inputs=True):
        _logits(model, torch.randint(0, 300, (1, 8)))
    assert got["d"][-1] == down.in_features


def test_tensor_or_tuple_accessor():
    t = torch.ones(2, 3, 4)
    assert as_tensor(t) is t and as_tensor((t, None)) is t
    new = torch.zeros_like(t)
    assert with_tensor(t, new) is new
    out = with_tensor((t, "cache"), new)
    assert isinstance(out, tuple) and out[0] is new and out[1] == "cache"
    with pytest.raises(TypeError):
        as_tensor({"a": t})


def test_observer_sees_the_patched_output_whatever_the_registration_order():
    model, _ = tiny()
    mod, seen = layer(model, 1), {}
    ids = torch.randint(0, 300, (1, 8))
    with patch({"p": mod}, lambda n, h: h + 1000.0), capture({"c": mod}, lambda n, h: seen.__setitem__("a", h.clone())):
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert seen["a"].min() > 500  # observer registered last still sees the edit
    assert torch.equal(hs[2], seen["a"])  # and so does output_hidden_states


def test_forward_without_logits_does_not_rerun_on_a_hook_type_error():
    """Defect: any TypeError (one raised inside a hook included) made it run the forward again
    without logits_to_keep, masking the error behind a second pass."""
    from pipeline.models.load import forward_without_logits

    model, _ = tiny()
    calls = []

    def bad(_n, _h):
        calls.append(1)
        raise TypeError("raised inside a hook")

    with pytest.raises(TypeError, match="inside a hook"), capture({"x": layer(model, 0)}, bad):
        forward_without_logits(model, torch.randint(0, 300, (1, 8)))
    assert len(calls) == 1


def test_capture_inputs_takes_hidden_states_not_the_first_keyword():
    """Defect: capture(inputs=True) took the first keyword argument as the input."""
    model, _ = tiny()
    block = layer(model, 0)
    got = {}
    h = torch.randn(1, 5, 64)
    with capture({"x": block}, lambda n, t: got.__setitem__("x", t), inputs=True), torch.no_grad():
        pos = torch.arange(5)[None]
        emb = model.model.rotary_emb(h, pos)
        block(attention_mask=None, position_embeddings=emb, hidden_states=h)
    assert got["x"] is h
