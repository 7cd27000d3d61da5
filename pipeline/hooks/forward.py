"""Temporary forward hooks as context managers.

transformers 5 decoder layers return a plain Tensor while other modules return tuples whose first
element is the hidden state; ``as_tensor`` / ``with_tensor`` are the one place that knows this
(``out[0]`` on a Tensor would silently take batch row 0).

Observers (``capture``) must return None so the model's output is untouched; editors (``patch``)
return the replacement tensor; ``patch_seeing_inputs`` edits an output knowing the call's inputs
(positional and keyword). Hooks are always removed on exit, also when the body raises.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from pipeline.core.errors import PipelineError

Observer = Callable[[str, torch.Tensor], None]
Editor = Callable[[str, torch.Tensor], torch.Tensor | None]
# (name, module, args, kwargs, output) -> replacement output or None: an output editor that reads the inputs
InputAwareEditor = Callable[[str, nn.Module, tuple, dict, torch.Tensor], torch.Tensor | None]


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


def _block_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, str | int]:
    """The hidden-state input of a module call: ``hidden_states=`` or the first positional
    argument (never "the first keyword", which may be a mask), and where it was found."""
    if "hidden_states" in kwargs and isinstance(kwargs["hidden_states"], torch.Tensor):
        return kwargs["hidden_states"], "hidden_states"
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    raise PipelineError(f"{type(module).__name__} was called without a hidden-state input "
                        "(neither a positional tensor nor hidden_states=)")


@contextmanager
def capture(
    modules: Mapping[str, nn.Module], fn: Observer, *, inputs: bool = False, whole_output: bool = False
) -> Iterator[None]:
    """Call ``fn(name, tensor)`` on each module's output (or hidden-state input) during forward.
    ``whole_output=True``: ``fn(name, output)`` gets the module's output as it is (a tuple too:
    an attention module's ``(output, weights)``).

    Observers are appended, so they run after every editing hook (``patch`` prepends): what they
    see is the output the next module receives.
    """
    handles = []
    try:
        for name, module in modules.items():
            if inputs:
                def pre(_m: nn.Module, args: tuple, kwargs: dict, _n: str = name) -> None:
                    fn(_n, _block_input(_m, args, kwargs)[0])

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(_m: nn.Module, _a: tuple, out: Any, _n: str = name) -> None:
                    fn(_n, out if whole_output else as_tensor(out))

                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


# One editing hook per (module, output | input) runs that module's editors in the order they were
# entered: an inner ``with patch(...)`` sees what the outer one wrote and has the last word, as
# nested context managers read. (Each patch prepending its own hook ran the innermost first.)
_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _run_output_chain(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
    for name, fn, *sees_inputs in list(_CHAINS[module]["output"][1]):
        new = fn(name, module, args, kwargs, as_tensor(out)) if sees_inputs else fn(name, as_tensor(out))
        if new is not None:
            out = with_tensor(out, new)
    return out


def _run_input_chain(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    for name, fn in list(_CHAINS[module]["input"][1]):
        h, where = _block_input(module, args, kwargs)
        new = fn(name, h)
        if new is None:
            continue
        if where == "hidden_states":
            kwargs = {**kwargs, "hidden_states": new}
        else:
            args = (new, *args[1:])
    return args, kwargs


def _add_editor(module: nn.Module, kind: str, entry: tuple) -> None:
    chains = _CHAINS.setdefault(module, {})
    if kind not in chains:
        if kind == "output":
            handle = module.register_forward_hook(_run_output_chain, prepend=True, with_kwargs=True)
        else:
            handle = module.register_forward_pre_hook(_run_input_chain, prepend=True, with_kwargs=True)
        chains[kind] = (handle, [])
    chains[kind][1].append(entry)


def _remove_editor(module: nn.Module, kind: str, entry: tuple) -> None:
    handle, chain = _CHAINS[module][kind]
    chain.remove(entry)
    if not chain:
        handle.remove()
        del _CHAINS[module][kind]


@contextmanager
def patch(modules: Mapping[str, nn.Module], fn: Editor, *, inputs: bool = False) -> Iterator[None]:
    """Replace each module's hidden-state output (``inputs=True``: its hidden-state input) with
    ``fn(name, tensor)`` (None keeps it).

    Editing in place is allowed; returning a new tensor is safer under autograd. Editors run
    before observers and before the hooks through which transformers 5 collects
    ``output_hidden_states`` (both see the edited output); several editors on one module run in
    the order they were entered (outer first, inner last).
    """
    added = []
    kind = "input" if inputs else "output"
    try:
        for name, module in modules.items():
            entry = (name, fn)
            _add_editor(module, kind, entry)
            added.append((module, entry))
        yield
    finally:
        for module, entry in reversed(added):
            _remove_editor(module, kind, entry)


@contextmanager
def patch_seeing_inputs(modules: Mapping[str, nn.Module], fn: InputAwareEditor) -> Iterator[None]:
    """Like ``patch`` on outputs (same chain, same order), for an editor that needs the call's
    inputs too: ``fn(name, module, args, kwargs, output)`` returns the replacement hidden-state
    output (None keeps it); ``args`` / ``kwargs`` are the call's positional and keyword arguments."""
    added = []
    try:
        for name, module in modules.items():
            entry = (name, fn, True)
            _add_editor(module, "output", entry)
            added.append((module, entry))
        yield
    finally:
        for module, entry in reversed(added):
            _remove_editor(module, "output", entry)
