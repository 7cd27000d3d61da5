"""Where a model's weights are, addressed as the papers do: the down-projection weight of a super
weight (paper B), and every attention/MLP matrix inside the decoder layers (what quantization, its
calibration and the non-super-weight pruning walk). Addressing only: reading, never editing; the
edits live in :mod:`pipeline.interventions`.

Down-projection weights are addressed as paper B does, ``W[row, col]`` with ``row`` = output
(hidden) channel and ``col`` = input (intermediate) channel, whatever the storage: GPT-2's Conv1D
keeps its weight as (in, out); transformers-5 MoE experts keep a fused (experts, out, in) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.arch import get_arch, layer, layer_module, num_layers


@dataclass(frozen=True)
class WeightSite:
    """One down-projection weight: decoder layer, output channel ``row``, input channel ``col``."""

    layer: int
    row: int
    col: int
    expert: int | None = None

    @property
    def key(self) -> str:
        """Compact form for CSV cells: ``layer:row:col`` (MoE: ``layer:row:col:e<expert>``)."""
        return f"{self.layer}:{self.row}:{self.col}" + ("" if self.expert is None else f":e{self.expert}")

    def __str__(self) -> str:
        return f"layer {self.layer} W[{self.row}, {self.col}]" + (
            "" if self.expert is None else f" (expert {self.expert})")


def down_proj_matrix(model: nn.Module, layer_idx: int, expert: int | None = None) -> torch.Tensor:
    """A (out, in) view of a layer's MLP down-projection weight; writing to it edits the model."""
    spec = get_arch(model)
    module = layer_module(model, layer_idx, "down_proj")
    if spec.moe:
        if expert is None:
            raise ValueError(f"layer {layer_idx} is a mixture of experts: name the expert")
        return getattr(module, spec.expert_down_param).data[expert]
    weight = module.weight.data
    return weight.T if spec.weights_in_out else weight


def stored_index(model: nn.Module, site: WeightSite) -> tuple[int, tuple[int, int]]:
    """(data_ptr of the stored down-projection weight, index of ``site`` in it)."""
    spec = get_arch(model)
    if site.expert is not None:
        return down_proj_matrix(model, site.layer, site.expert).data_ptr(), (site.row, site.col)
    weight = layer_module(model, site.layer, "down_proj").weight.data
    idx = (site.col, site.row) if spec.weights_in_out else (site.row, site.col)
    return weight.data_ptr(), idx


@dataclass(frozen=True)
class Matrix:
    """One weight matrix inside the decoder layers, as the one walker over them yields it.

    ``stored`` is the tensor as stored (writing to it edits the model): a Linear's weight, a
    GPT-2 Conv1D's (in, out) weight, or one expert's slice of a fused 3-D expert parameter.
    ``module`` is the module that applies it (the experts container for an expert slice)."""

    name: str
    module: nn.Module
    stored: torch.Tensor
    in_out: bool = False
    expert: int | None = None
    param: str = "weight"


def decoder_matrices(model: nn.Module) -> list[Matrix]:
    """Every attention/MLP weight matrix inside the decoder layers (no embeddings, norms or LM
    head), named ``layers.<i>.<path>``; fused 3-D expert parameters as one matrix per expert,
    ``layers.<i>.<path>.<param>[<e>]``. Quantization, its calibration and the non-super-weight
    pruning all walk this list, so they always see the same weights."""
    in_out = get_arch(model).weights_in_out
    out = []
    for i in range(num_layers(model)):
        for name, mod in layer(model, i).named_modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter) and w.ndim == 2 and not isinstance(mod, nn.Embedding):
                out.append(Matrix(f"layers.{i}.{name}", mod, w.data, in_out))
            for pname, p in mod.named_parameters(recurse=False):
                if p.ndim == 3:  # (experts, out, in)
                    out += [Matrix(f"layers.{i}.{name}.{pname}[{e}]", mod, p.data[e], False, e, pname)
                            for e in range(p.shape[0])]
    return out


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder matrices applied by a module of their own (``decoder_matrices`` less the
    expert slices): the linears whose inputs a forward pre-hook sees."""
    return [(m.name, m.module) for m in decoder_matrices(model) if m.expert is None]
