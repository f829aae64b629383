"""Fused projections: the packed linears that read the same input (attention's q/k/v, the MLP's
gate/up) become one packed linear each, so that a forward pass launches one kernel and streams
the weights once instead of three or two times.

AutoAWQ's ``fuse_layers=True`` does this by swapping in its own attention and MLP modules, which
need its compiled ``awq_ext``. Here the model's own attention code runs unchanged: the fused linear sits on
the parent module (``self_attn.qkv_proj``, ``mlp.gate_up_proj``) and each old projection becomes
a :class:`ProjectionSlice` that returns its columns of the shared output. The first projection
called with an input computes the shared output; the others, called with the same tensor,
take their slices of it (a different input is computed afresh, so any call order is correct).

A gated MLP whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with a
SiLU (Llama, Mistral, Qwen2: checked on its bytecode, not its class name) goes one step further:
its gate and up rows are woven in turn into one linear whose kernel multiplies ``silu(gate)`` by
``up`` in its epilogue, and a :class:`GatedMLP` takes the MLP's place, so that the MLP runs two
launches (gate/up, down) instead of three or four (AutoAWQ's fused MLP and vLLM's
``SiluAndMul`` do the same).

It assumes what decoder-only models do (every model ``load_quantized`` takes): the projections
of one group are called with the same input tensor in each forward pass. Where they are not
(cross-attention, whose q reads other states than k and v), the result is still correct but
each call computes the whole fused layer. A fused model's state dict is not AutoAWQ's: fuse
after loading, and save before fusing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import CodeType
from typing import Any

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

    def __init__(self, linear: AWQLinear, names: tuple[str, ...], sizes: tuple[int, ...],
                 interleaved: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.names, self.sizes = names, sizes
        self.interleaved = interleaved  # outputs in turn (layouts.interleave_out_features), not side by side
        self._split = list(sizes)
        self._last = _LastCall()

    def _parts(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.interleaved:
            return out.reshape(*out.shape[:-1], -1, len(self._split)).unbind(-1)
        return tuple(torch.split(out, self._split, dim=-1))

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Projection ``index`` of ``x``: computed with the others on the first call for ``x``."""
        last = self._last
        if last.input is not x or not last.outputs:
            last.outputs = self._parts(self.linear(x))
            last.input, last.served = x, 0
        out = last.outputs[index]
        last.served += 1
        if last.served == len(self._split):  # every projection has had its columns: let them go
            last.input, last.outputs = None, ()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All projections of ``x``, side by side (or in turn, where ``interleaved``)."""
        out: torch.Tensor = self.linear(x)
        return out

    def extra_repr(self) -> str:
        return (", ".join(f"{name}: {size}" for name, size in zip(self.names, self.sizes))
                + (", interleaved" if self.interleaved else ""))


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


class GatedMLP(nn.Module):
    """Stands where a SwiGLU MLP was: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` in two
    launches, SiLU x up made in the epilogue of the gate/up kernel (its rows woven in turn).
    ``gate_proj`` and ``up_proj`` still answer alone (from one computation of both)."""

    gate_up_proj: SharedProjection
    down_proj: nn.Module

    def __init__(self, mlp: nn.Module, shared: SharedProjection) -> None:
        super().__init__()
        self.replaces = type(mlp).__name__
        for name in ("config", "hidden_size", "intermediate_size"):  # what code may read off an MLP
            if hasattr(mlp, name):
                setattr(self, name, getattr(mlp, name))
        self.gate_up_proj = shared
        self.gate_proj = ProjectionSlice(shared, 0)
        self.up_proj = ProjectionSlice(shared, 1)
        self.down_proj = mlp.get_submodule("down_proj")
        self.act_fn = mlp.get_submodule("act_fn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = self.gate_up_proj.linear(x, epilogue="silu_mul")
        out: torch.Tensor = self.down_proj(gated)
        return out

    def extra_repr(self) -> str:
        return f"replaces {self.replaces}: SiLU x up in the gate/up kernel's epilogue"


def _swiglu_forward(self: Any, x: Any) -> Any:  # transformers' LlamaMLP.forward, word for word
    down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return down_proj


def _swiglu_forward_short(self: Any, x: Any) -> Any:  # the same without the local name
    return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _code(function: Any) -> tuple[bytes, tuple[str, ...], tuple[str, ...]] | None:
    code = getattr(function, "__code__", None)
    return (code.co_code, code.co_names, code.co_varnames) if isinstance(code, CodeType) else None


_SWIGLU_CODES = (_code(_swiglu_forward), _code(_swiglu_forward_short))


def _silu_forward(self: Any, input: Any) -> Any:  # transformers 5.x's SiLUActivation.forward
    return nn.functional.silu(input)


def _is_silu(act: Any) -> bool:
    """``nn.SiLU`` (transformers 4.x's Llama MLP), or a module whose forward is exactly
    ``nn.functional.silu(input)`` (5.x's ``transformers.activations.SiLUActivation``)."""
    if isinstance(act, nn.SiLU):
        return True
    return (isinstance(act, nn.Module) and not act._forward_hooks and not act._forward_pre_hooks
            and "forward" not in vars(act) and _code(type(act).forward) == _code(_silu_forward))


def _not_swiglu(mlp: nn.Module) -> str | None:
    """Why ``mlp`` cannot become a :class:`GatedMLP` (None if it can)."""
    if "forward" in vars(mlp) or mlp._forward_hooks or mlp._forward_pre_hooks:
        return "its forward is wrapped or hooked"
    if _code(type(mlp).forward) not in _SWIGLU_CODES:
        return "its forward is not down_proj(act_fn(gate_proj(x)) * up_proj(x))"
    if not _is_silu(getattr(mlp, "act_fn", None)):
        return f"its activation is {type(getattr(mlp, 'act_fn', None)).__name__}, not SiLU"
    return None


@dataclass
class FuseReport:
    """What :func:`fuse_projections` fused, and what it left alone and why. ``gated``: the MLPs
    whose SiLU x up runs in the gate/up kernel; ``ungated``: the fused gate/up linears whose
    MLP keeps its own activation, and why."""

    fused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    gated: list[str] = field(default_factory=list)
    ungated: dict[str, str] = field(default_factory=dict)


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
def fuse_projections(model: nn.Module, gate: bool = True) -> FuseReport:
    """Fuse, in place, every q/k/v and gate/up group of packed linears in ``model``; with
    ``gate``, SwiGLU MLPs become :class:`GatedMLP` (SiLU x up in the kernel's epilogue).

    The fused layer holds exactly the same integers, scales and zeros (lossless); outputs
    match the unfused model's up to the order in which fp32 sums are rounded (and, gated,
    ``silu(gate) * up`` computed in fp32 rather than on fp16 gate and up outputs)."""
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
            ungated = None  # why a gate/up group's MLP keeps its activation
            if fused_name == "gate_up_proj":
                ungated = "gate=False" if not gate else _not_swiglu(module)
                if ungated is None and linears[0].out_features != linears[1].out_features:
                    ungated = "gate_proj and up_proj differ in width"
                if ungated is None and not name:
                    ungated = "the MLP is the model itself"
            gated = fused_name == "gate_up_proj" and ungated is None
            join = layouts.interleave_out_features if gated else layouts.concat_out_features
            packed = join([p.packed() for p in linears])
            bias = None
            if any(p.bias is not None for p in linears):
                biases = [p.bias if p.bias is not None else p.scales.new_zeros(p.out_features) for p in linears]
                bias = torch.stack(biases, dim=-1).flatten() if gated else torch.cat(biases)
            first = linears[0]
            linear = type(first).from_packed(packed, bias)
            linear.path, linear.dispatch = first.path, first.dispatch
            shared = SharedProjection(linear, names, tuple(p.out_features for p in linears), interleaved=gated)
            if gated:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, GatedMLP(module, shared))
                report.gated.append(name)
            else:
                setattr(module, fused_name, shared)
                for index, n in enumerate(names):
                    setattr(module, n, ProjectionSlice(shared, index))
                if ungated is not None:
                    report.ungated[where] = ungated
            report.fused.append(where)
    return report
