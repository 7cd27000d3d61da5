import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import capture
from pipeline.hooks.positions import first_positions
from pipeline.interventions.sites import Site, random_control, set_sites
from pipeline.models.arch import layer
from tests.helpers import planted, tiny

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
    with set_sites(model, {1: sites}, _is_delim):
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
    with pytest.raises(RuntimeError, match="boom"), set_sites(model, {0: [Site("first_token", 0, 0.0)]}, _is_delim):
        with torch.no_grad():
            model(input_ids=ids)
        raise RuntimeError("boom")
    assert not model._forward_pre_hooks and not layer(model, 0)._forward_hooks


def test_bad_sites_and_layers_are_clear_errors():
    model, _ = tiny()
    with pytest.raises(PipelineError, match="token types"), set_sites(model, {0: [Site("other", 1, 0.0)]}, _is_delim):
        pass
    with (pytest.raises(PipelineError, match="out of range"),
          set_sites(model, {9: [Site("first_token", 1, 0.0)]}, _is_delim)):
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


def _recorded_outputs(model, idx):
    """A capture that keeps every forward's output of layer ``idx`` (clones)."""
    seen = []
    return seen, capture({"x": layer(model, idx)}, lambda n, h: seen.append(h.clone()))


def test_generate_under_an_intervention_edits_only_the_real_first_token():
    """Defect: positions came from whatever input_ids reached the model, so under KV-cache
    generation every decoded token was edited as if it were the first."""
    model, _ = tiny()
    ids = torch.tensor([[9, 11, 12, 13]])
    seen, cap = _recorded_outputs(model, 1)
    with set_sites(model, {1: [Site("first_token", 3, 777.0)]}, _is_delim), cap, torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert seen[0].shape[1] == 4 and seen[0][0, 0, 3] == 777.0  # the prompt's first token
    assert all(h.shape[1] == 1 for h in seen[1:]) and len(seen) == 3
    assert all(h[0, 0, 3] != 777.0 for h in seen[1:])  # decode steps: not the first token


def test_generate_finds_a_first_delimiter_that_appears_while_decoding():
    model, _ = tiny()
    seen, cap = _recorded_outputs(model, 1)
    with torch.no_grad():
        plain = model.generate(torch.tensor([[9, 11]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    delim = int(plain[0, 3])  # the token decoded at step 2 plays the delimiter
    with set_sites(model, {1: [Site("first_delimiter", 3, 555.0)]}, lambda t: t == delim), cap, torch.no_grad():
        model.generate(torch.tensor([[9, 11]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    # forwards: prompt (2 tokens), then tokens at absolute 2, 3 (the delimiter), 4
    assert [bool(h[0, -1, 3] == 555.0) for h in seen] == [False, False, True, False]


def test_left_padding_edits_the_first_real_token_not_the_pad():
    """Defect: under left padding the pad was edited instead of the first real token."""
    model, _ = tiny()
    ids = torch.tensor([[0, 0, 9, 11], [9, 11, 12, 13]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    seen, cap = _recorded_outputs(model, 1)
    with set_sites(model, {1: [Site("first_token", 3, 777.0)]}, _is_delim), cap, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    h = seen[0]
    assert h[0, 2, 3] == 777.0 and h[0, 0, 3] != 777.0 and h[1, 0, 3] == 777.0


def test_nested_edits_inner_has_the_last_word():
    """Defect: each patch prepended its hook, so the innermost ran first and the outer overwrote
    it (``with planted(+5000): with set_zero`` left 5,000)."""
    model, _ = tiny()
    ids = torch.tensor([[9, 11, 12]])
    seen, cap = _recorded_outputs(model, 1)
    with planted(model, 1, 3, 5000.0), set_sites(model, {1: [Site("first_token", 3, 0.0)]}, _is_delim), cap:
        with torch.no_grad():
            model(input_ids=ids)
    assert seen[-1][0, 0, 3] == 0.0
    seen, cap = _recorded_outputs(model, 1)
    with set_sites(model, {1: [Site("first_token", 3, 0.0)]}, _is_delim), planted(model, 1, 3, 5000.0), cap:
        with torch.no_grad():
            model(input_ids=ids)
    assert seen[-1][0, 0, 3] == 5000.0  # zeroed, then the inner plant adds 5,000
    assert not layer(model, 1)._forward_hooks


def test_whole_vectors_written_at_every_block_input():
    """Vector-valued sites at a block's input (Fix-Reg-Mean style), at every block at once."""
    model, _ = tiny()
    ids = torch.tensor([[9, 11, DELIM, 12]])
    width = 64
    vectors = {i: torch.full((width,), float(i + 1)) for i in range(4)}
    seen = {}
    mods = {str(i): layer(model, i) for i in range(4)}
    with set_sites(model, {i: [Site("first_token", None, v)] for i, v in vectors.items()}, _is_delim, at="input"):
        with capture(mods, lambda n, h: seen.__setitem__(int(n), h.clone()), inputs=True), torch.no_grad():
            edited = model(input_ids=ids).logits
    assert all(torch.equal(seen[i][0, 0], vectors[i]) for i in range(4))
    assert not torch.equal(seen[1][0, 1], vectors[1])  # other tokens untouched
    with torch.no_grad():
        assert not torch.equal(edited, model(input_ids=ids).logits)
    assert all(not layer(model, i)._forward_pre_hooks for i in range(4))


def test_a_leaky_edit_is_caught_even_when_the_logits_are_not_finite(tmp_path):
    """Defect N14: the loop compared a probe's logits; with NaN, inf or saturated logits a leaky
    edit passed. It compares every weight's and buffer's bits and the hooks left behind now."""
    from contextlib import contextmanager

    import pytest
    import torch

    from pipeline.evaluation.conditions import evaluate_conditions
    from pipeline.hooks.forward import patch
    from pipeline.models.arch import layer
    from tests.helpers import make_ctx

    ctx = make_ctx(tmp_path)
    with torch.no_grad():
        ctx.model.lm_head.weight.fill_(float("inf"))  # every logit non-finite: a probe sees nothing

    @contextmanager
    def leaky_weight():
        with torch.no_grad():
            layer(ctx.model, 0).mlp.down_proj.weight[0, 0] += 1.0  # never put back
        yield

    leaked = []

    @contextmanager
    def leaky_hook():
        leaked.append(patch({"l0": layer(ctx.model, 0)}, lambda _n, h: h * 3.0))
        leaked[-1].__enter__()  # never exited
        yield

    def run(cond):
        return evaluate_conditions(ctx, "t", {"x": cond}, ppl_sets={}, eval_suite=None, zero_shot_limit=None)

    with pytest.raises(RuntimeError, match=r"left the model changed \(param:model.layers.0.mlp.down_proj.weight\)"):
        run(leaky_weight)
    with pytest.raises(RuntimeError, match=r"left the model changed \(hooks:model.layers.0\)"):
        run(leaky_hook)
