"""Fused projections: the packed linears that read the same input (attention's q/k/v, the MLP's
gate/up) become one packed linear each, so that a forward pass launches one kernel and streams
the weights once instead of three or two times.

AutoAWQ's ``fuse_layers=True`` does this by swapping in its own attention and MLP modules, which
need its compiled ``awq_ext``. Here the model's own code runs unchanged: the fused linear sits on
the parent module (``self_attn.qkv_proj``, ``mlp.gate_up_proj``) and each old projection becomes
a :class:`ProjectionSlice` that returns its columns of the shared output. The first projection
called with an input computes the shared output; the others, called with the same tensor,
take their slices of it (a different input is computed afresh, so any call order is correct).

It assumes what decoder-only models do (every model ``load_quantized`` takes): the projections
of one group are called with the same input tensor in each forward pass. Where they are not
(cross-attention, whose q reads other states than k and v), the result is still correct but
each call computes the whole fused layer. A fused model's state dict is not AutoAWQ's: fuse
after loading, and save before fusing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import layouts
from .modules import AWQLinear

#: (projections that read one input, name of the fused linear on their parent module)
FUSED_GROUPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("q_proj", "k_proj", "v_proj"), "qkv_proj"),
    (("gate_proj", "up_proj"), "gate_up_proj"),
)


class _LastCall:
    """The input a :class:`SharedProjection` last computed and its projections (a plain object:
    assigning to an ``nn.Module`` attribute costs ~2 us of host time, and eager decode is bound
    by the host)."""

    __slots__ = ("input", "outputs", "served")

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.served = 0


class SharedProjection(nn.Module):
    """A packed linear whose output is several projections of one input, side by side."""

    def __init__(self, linear: AWQLinear, names: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = linear
        self.names, self.sizes = names, sizes
        self._split = list(sizes)
        self._last = _LastCall()

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Projection ``index`` of ``x``: computed with the others on the first call for ``x``."""
        last = self._last
        if last.input is not x or not last.outputs:
            last.outputs = self.linear(x).split(self._split, dim=-1)
            last.input, last.served = x, 0
        out = last.outputs[index]
        last.served += 1
        if last.served == len(self._split):  # every projection has had its columns: let them go
            last.input, last.outputs = None, ()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All projections of ``x``, concatenated."""
        out: torch.Tensor = self.linear(x)
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {size}" for name, size in zip(self.names, self.sizes))


class ProjectionSlice(nn.Module):
    """Stands where a fused projection was: its columns of the shared output."""

    shared: SharedProjection

    def __init__(self, shared: SharedProjection, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "shared", shared)  # not a child: the parent module owns it once
        self.index = index
        self.in_features = shared.linear.in_features
        self.out_features = shared.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.index)

    def extra_repr(self) -> str:
        return f"{self.shared.names[self.index]} of the fused linear, out_features={self.out_features}"


@dataclass
class FuseReport:
    """What :func:`fuse_projections` fused, and what it left alone and why."""

    fused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _incompatible(linears: list[AWQLinear]) -> str | None:
    """Why these packed linears cannot share one (None if they can)."""
    first = linears[0]
    for p in linears[1:]:
        if (p.layout, p.in_features, p.group_size, p.path, p.dispatch) != (
                first.layout, first.in_features, first.group_size, first.path, first.dispatch):
            return "their layouts, input sizes, group sizes or kernel paths differ"
        if p.qweight.device != first.qweight.device:
            return "they live on different devices"
    return None


@torch.no_grad()
def fuse_projections(model: nn.Module) -> FuseReport:
    """Fuse, in place, every q/k/v and gate/up group of packed linears in ``model``.

    The fused layer holds exactly the same integers, scales and zeros (lossless); outputs
    match the unfused model's up to the order in which fp32 sums are rounded."""
    report = FuseReport()
    for name, module in list(model.named_modules()):
        for names, fused_name in FUSED_GROUPS:
            parts = [getattr(module, n, None) for n in names]
            if all(p is None for p in parts):
                continue
            where = f"{name}.{fused_name}" if name else fused_name
            linears = [p for p in parts if isinstance(p, AWQLinear)]
            if hasattr(module, fused_name):
                why: str | None = f"the module already has a {fused_name}"
            elif any(p is None for p in parts):
                why = "some of " + ", ".join(names) + " are missing"
            elif len(linears) < len(parts):
                why = "not all of them are this library's packed linears"
            else:
                why = _incompatible(linears)
            if why is not None:
                report.skipped[where] = why
                continue
            packed = layouts.concat_out_features([p.packed() for p in linears])
            bias = None
            if any(p.bias is not None for p in linears):
                bias = torch.cat([p.bias if p.bias is not None else p.scales.new_zeros(p.out_features)
                                  for p in linears])
            first = linears[0]
            linear = type(first).from_packed(packed, bias)
            linear.path, linear.dispatch = first.path, first.dispatch
            shared = SharedProjection(linear, names, tuple(p.out_features for p in linears))
            setattr(module, fused_name, shared)
            for index, n in enumerate(names):
                setattr(module, n, ProjectionSlice(shared, index))
            report.fused.append(where)
    return report
