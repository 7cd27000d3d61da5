"""Temporary forward hooks as context managers.

transformers 5 decoder layers return a plain Tensor while other modules return tuples whose first
element is the hidden state; ``as_tensor`` / ``with_tensor`` are the one place that knows this
(``out[0]`` on a Tensor would silently take batch row 0).

Observers (``capture``) must return None so the model's output is untouched; editors (``patch``)
return the replacement tensor. Hooks are always removed on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Observer = Callable[[str, torch.Tensor], None]
Editor = Callable[[str, torch.Tensor], torch.Tensor | None]


def as_tensor(out: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output that is a Tensor or a tuple/list led by one."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(out).__name__}")


def with_tensor(out: Any, new: torch.Tensor) -> Any:
    """``out`` with its hidden-state tensor replaced by ``new`` (same container type)."""
    if isinstance(out, torch.Tensor):
        return new
    return type(out)((new, *out[1:])) if isinstance(out, tuple) else [new, *out[1:]]


@contextmanager
def capture(
    modules: Mapping[str, nn.Module], fn: Observer, *, inputs: bool = False
) -> Iterator[None]:
    """Call ``fn(name, tensor)`` on each module's output (or first positional input) during forward.

    Observers are appended, so they run after every editing hook (``patch`` prepends): what they
    see is the output the next module receives.
    """
    handles = []
    try:
        for name, module in modules.items():
            if inputs:
                def pre(_m: nn.Module, args: tuple, kwargs: dict, _n: str = name) -> None:
                    x = args[0] if args else next(iter(kwargs.values()))
                    fn(_n, x)

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(_m: nn.Module, _a: tuple, out: Any, _n: str = name) -> None:
                    fn(_n, as_tensor(out))

                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch(modules: Mapping[str, nn.Module], fn: Editor) -> Iterator[None]:
    """Replace each module's hidden-state output with ``fn(name, tensor)`` (None keeps it).

    Editing in place is allowed; returning a new tensor is safer under autograd. Editors are
    prepended, so they run before observers and before the hooks through which transformers 5
    collects ``output_hidden_states``: both see the edited output.
    """
    handles = []
    try:
        for name, module in modules.items():
            def post(_m: nn.Module, _a: tuple, out: Any, _n: str = name) -> Any:
                new = fn(_n, as_tensor(out))
                return None if new is None else with_tensor(out, new)

            handles.append(module.register_forward_hook(post, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()
