import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import capture
from pipeline.hooks.sites import Site, first_positions, random_control, set_sites
from pipeline.models.arch import layer
from tests.helpers import tiny

DELIM = 5  # a token id that plays the delimiter in these tests


def _is_delim(t):
    return t == DELIM


def _layer_out(model, idx, ids):
    got = {}
    with capture({"x": layer(model, idx)}, lambda n, h: got.__setitem__("h", h.clone())), torch.no_grad():
        logits = model(ids).logits  # positional, as lm-eval calls it
    return got["h"], logits


def test_set_sites_edits_exactly_the_named_activations_then_restores():
    model, _ = tiny()
    ids = torch.tensor([[9, 11, DELIM, 12, DELIM], [13, 14, 15, 16, 17]])
    before, logits0 = _layer_out(model, 1, ids)
    sites = [Site("first_token", 3, 0.0), Site("first_delimiter", 7, 123.0)]
    with set_sites(model, 1, sites, _is_delim):
        during, logits1 = _layer_out(model, 1, ids)
    after, logits2 = _layer_out(model, 1, ids)
    assert during[0, 0, 3] == 0 and during[1, 0, 3] == 0
    assert during[0, 2, 7] == 123.0 and during[0, 4, 7] == before[0, 4, 7]  # only the FIRST delimiter
    mask = torch.ones_like(before, dtype=torch.bool)
    mask[:, 0, 3] = False
    mask[0, 2, 7] = False  # row 1 has no delimiter: untouched there
    assert torch.equal(during[mask], before[mask])
    assert not torch.equal(logits0, logits1)
    assert torch.equal(logits0, logits2) and torch.equal(before, after)


def test_set_sites_reads_keyword_input_ids_and_cleans_up_on_error():
    model, _ = tiny()
    ids = torch.tensor([[9, 11, 12]])
    with pytest.raises(RuntimeError, match="boom"), set_sites(model, 0, [Site("first_token", 0, 0.0)], _is_delim):
        with torch.no_grad():
            model(input_ids=ids)
        raise RuntimeError("boom")
    assert not model._forward_pre_hooks and not layer(model, 0)._forward_hooks


def test_bad_sites_and_layers_are_clear_errors():
    model, _ = tiny()
    with pytest.raises(PipelineError, match="token types"), set_sites(model, 0, [Site("other", 1, 0.0)], _is_delim):
        pass
    with pytest.raises(PipelineError, match="out of range"), set_sites(model, 9, [Site("first_token", 1, 0.0)], _is_delim):
        pass


def test_first_positions():
    ids = torch.tensor([[DELIM, 1, DELIM], [1, 2, 3]])
    assert first_positions(ids, _is_delim) == {"first_token": [0, 0], "first_delimiter": [2, None]}


def test_random_control_same_count_other_dims_deterministic():
    sites = [Site("first_token", 3, 0.0), Site("first_token", 7, 0.0), Site("first_delimiter", 3, 0.0)]
    a, b = random_control(sites, 64, seed=1), random_control(sites, 64, seed=1)
    assert a == b and a != random_control(sites, 64, seed=2)
    assert [s.token_type for s in a].count("first_token") == 2 and len(a) == 3
    assert not {s.dim for s in a} & {3, 7} and all(s.value == 0.0 for s in a)
