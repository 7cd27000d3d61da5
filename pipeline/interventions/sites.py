"""Reversible interventions on activations, as context managers (paper A §3 Table 3, §5 ViTs).

``set_sites`` overwrites chosen activations of tokens named by their role ("starting token",
"first delimiter", as paper A names them) at the output or the input of chosen decoder blocks, on
every forward pass: set-to-zero and set-to-mean of single massive activations, a control on
random dims, or whole vectors (``dim=None``) written at every block's input (paper A's
Fix-Reg-Mean). Roles are resolved once per forward from the model's own call (left padding and KV
cache included: :class:`pipeline.hooks.positions.RoleTracker`). Everything is done with hooks: on
exit the model is bit-identical to before (tests check logits).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from pipeline.core.errors import PipelineError
from pipeline.hooks.forward import patch
from pipeline.hooks.positions import EDITABLE_ROLES, IsDelimiter, RoleTracker
from pipeline.models.arch import layer, prefix_roles

AT = ("output", "input")


@dataclass(frozen=True)
class Site:
    """One edit: at the token of ``token_type`` (a text role, or a prefix token's role such as
    ``sink_1`` / ``reg_3``), feature ``dim`` (None: the whole hidden vector)
    is set to ``value`` (a float, or a vector of the hidden size when ``dim`` is None)."""

    token_type: str
    dim: int | None
    value: float | torch.Tensor


def _write(h: torch.Tensor, positions: list[int | None], site: Site) -> None:
    for b, p in enumerate(positions):
        if p is None:
            continue
        if site.dim is None:
            h[b, p, :] = torch.as_tensor(site.value, dtype=h.dtype, device=h.device)
        else:
            h[b, p, site.dim] = site.value


def editable_roles(model: torch.nn.Module) -> tuple[str, ...]:
    """The token roles an edit can name on ``model``: the text roles, then its prefix tokens'."""
    return (*EDITABLE_ROLES, *prefix_roles(model))


@contextmanager
def set_sites(model: torch.nn.Module, sites: Mapping[int, Sequence[Site]], is_delimiter: IsDelimiter,
              at: str = "output") -> Iterator[None]:
    """Overwrite ``sites[layer]`` at the output (or input, ``at="input"``) of each decoder layer.

    Nested with other edits of the same block, the inner context has the last word.
    """
    if at not in AT:
        raise PipelineError(f"at must be one of {AT} (got {at!r})")
    prefix = prefix_roles(model)  # tokens the model puts before the text: a sink, CLS, registers
    wanted = {s.token_type for ss in sites.values() for s in ss}
    bad = sorted(wanted - set(editable_roles(model)))
    if bad:
        raise PipelineError(f"cannot intervene on token types {bad}; supported: {list(editable_roles(model))}")
    targets = {i: layer(model, i) for i in sites}  # out-of-range layers fail here, before any hook
    roles = RoleTracker(is_delimiter)

    def positions(role: str, batch: int) -> list[int | None]:
        """Where ``role`` sits in the hidden states: a prefix token at its own index; a text role
        where the tracker found it in input_ids, shifted past the prefix."""
        if role in prefix:
            return [prefix.index(role)] * batch
        return [None if p is None else p + len(prefix) for p in roles.current[role]]

    def editor(i: int):
        def edit(_name: str, h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            for s in sites[i]:
                _write(h, positions(s.token_type, h.shape[0]), s)
            return h
        return edit

    with ExitStack() as stack:
        # text roles are read off input_ids; prefix roles need no tracker (a ViT has no input_ids)
        if wanted & set(EDITABLE_ROLES):
            stack.enter_context(roles.tracking(model))
        for i, target in targets.items():
            stack.enter_context(patch({f"layer{i}": target}, editor(i), inputs=at == "input"))
        yield


def random_control(sites: Sequence[Site], hidden_size: int, seed: int) -> list[Site]:
    """As many zeroed activations as ``sites``, on the same tokens, at random dims that are not
    massive (paper A's control: zeroing random activations is harmless). ``hidden_size`` is the
    residual stream's width (:func:`pipeline.models.arch.residual_width`)."""
    massive = {s.dim for s in sites}
    pool = torch.tensor([d for d in range(hidden_size) if d not in massive])
    gen = torch.Generator().manual_seed(seed)
    out: list[Site] = []
    for ttype in dict.fromkeys(s.token_type for s in sites):
        k = sum(s.token_type == ttype for s in sites)
        picks = pool[torch.randperm(len(pool), generator=gen)[:k]]
        out += [Site(ttype, int(d), 0.0) for d in picks]
    return out
