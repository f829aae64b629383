"""Drop-in replacements for AutoAWQ's ``WQLinear_GEMM`` and ``WQLinear_GEMV``.

Same constructor, buffer names, shapes and dtypes, state dicts and ``from_linear`` semantics,
so checkpoints load unchanged; the forward pass runs this library's kernels (Triton on GPUs,
plain torch on the CPU) and accepts fp16 or bf16 inputs of any leading shape.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import nn

from . import layouts
from .kernels import op
from .kernels.dispatch import DispatchPlan, KernelPath, linear_with_replay
from .kernels.matmul import Replay
from .kernels.reference import Epilogue
from .layouts import PackedWeights


class AWQLinear(nn.Module):
    """A 4-bit linear layer in one of AutoAWQ's packed layouts (see ``layouts.py``)."""

    layout: ClassVar[str]
    kernel_name: ClassVar[str]

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, w_bit: int, group_size: int, in_features: int, out_features: int,
                 bias: bool, dev: torch.device | str | None = None, training: bool = False) -> None:
        super().__init__()
        if w_bit != 4:
            raise ValueError(f"only 4-bit weights are supported, got w_bit={w_bit}")
        group_size = in_features if group_size == -1 else group_size
        if group_size <= 0 or in_features % group_size or in_features % 8 or out_features % 8:
            raise ValueError(
                f"in_features={in_features} must be a multiple of group_size={group_size} and of 8, "
                f"out_features={out_features} a multiple of 8"
            )
        self.w_bit = w_bit
        self.group_size = group_size
        self.in_features = in_features
        self.out_features = out_features
        self.training = training
        self.path: KernelPath | str = "auto"  # or a forced path: "gemv", "gemm", "dequant", "wgmma", "torch"
        #: the GPU's dispatch plan (``Selection.plan``; ``load_quantized`` sets it); None: the plan
        #: built for the input's device at the first call of each shape
        self.dispatch: DispatchPlan | None = None
        self._packed_cache: tuple[tuple[int, ...], PackedWeights, torch.Tensor | None] | None = None
        self._replays: dict[tuple[object, ...], Replay] = {}
        shapes = layouts.expected_shapes(self.layout, in_features, out_features, group_size)
        self.register_buffer("qweight", torch.zeros(shapes["qweight"], dtype=torch.int32, device=dev))
        self.register_buffer("qzeros", torch.zeros(shapes["qzeros"], dtype=torch.int32, device=dev))
        self.register_buffer("scales", torch.zeros(shapes["scales"], dtype=torch.float16, device=dev))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, device=dev))
        else:
            self.bias = None

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, w_bit: int, group_size: int, init_only: bool = False,
                    scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None) -> AWQLinear:
        """As AutoAWQ's: ``scales``/``zeros`` are ``[K/G, N]`` for GEMM, ``[N, K/G]`` for GEMV.

        The integers are ``round((W + z * s) / s)`` in the weight's dtype, as AutoAWQ computes
        them, so the buffers are bit-identical to ``WQLinear_*.from_linear``'s.
        """
        module = cls(w_bit, group_size, linear.in_features, linear.out_features,
                     linear.bias is not None, linear.weight.device)
        if init_only:
            return module
        if scales is None or zeros is None:
            raise ValueError("from_linear needs scales and zeros unless init_only=True")
        if cls.layout == "gemm":  # AutoAWQ passes the GEMM version transposed scales/zeros
            scales, zeros = scales.t(), zeros.t()
        g = module.group_size
        scales16 = scales.half()
        scale_zeros = zeros * scales
        w = linear.weight.data
        # [N, K/G] -> [N, K], then AutoAWQ's arithmetic, in the weight's dtype
        sz, s16 = scale_zeros.repeat_interleave(g, dim=1), scales16.repeat_interleave(g, dim=1)
        intweight = torch.round((w + sz) / s16).to(torch.int32)
        packed = layouts.pack(intweight, zeros.to(torch.int32), scales16, g, cls.layout)
        module._load_packed(packed)
        if linear.bias is not None:
            module.bias = linear.bias.data.clone().half()
        return module

    @classmethod
    def from_packed(cls, packed: PackedWeights, bias: torch.Tensor | None = None) -> AWQLinear:
        if packed.layout != cls.layout:
            packed = layouts.convert(packed, cls.layout)
        module = cls(4, packed.group_size, packed.in_features, packed.out_features, bias is not None,
                     packed.qweight.device)
        module._load_packed(packed)
        if bias is not None:
            module.bias = bias.detach().clone().half()
        return module

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _BUFFERS and "_replays" in self.__dict__:  # new buffers: the kept launches read the old ones
            self._replays.clear()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> AWQLinear:
        self._replays.clear()  # .to(), .cuda(), .half(): new buffers
        moved: Any = super()._apply  # untyped in torch
        result: AWQLinear = moved(fn, recurse)
        return result

    def _load_packed(self, packed: PackedWeights) -> None:
        self.qweight = packed.qweight.contiguous()
        self.qzeros = packed.qzeros.contiguous()
        self.scales = packed.scales.contiguous().half()
        self._packed_cache = None
        self._replays.clear()

    # --- use ---------------------------------------------------------------------------------

    def packed(self) -> PackedWeights:
        """The buffers as :class:`PackedWeights` (validated once per set of buffers)."""
        key = (id(self.qweight), id(self.qzeros), id(self.scales), id(self.bias))
        if self._packed_cache is None or self._packed_cache[0] != key:
            packed = PackedWeights(self.layout, self.qweight, self.qzeros, self.scales,
                                   self.in_features, self.out_features, self.group_size)
            # the kept launches read the buffers by address: drop them with the old buffers,
            # which the cache holds until here (so that no new buffer can take an old id)
            self._packed_cache = (key, packed, self.bias)
            self._replays.clear()
        return self._packed_cache[1]

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()  # the launch closures do not pickle; they are rebuilt on use
        state["_replays"], state["_packed_cache"] = {}, None
        return state

    def to_layout(self, layout: str) -> AWQLinear:
        """A lossless copy of this layer in the other packed layout."""
        target = LAYOUT_CLASSES[layout]
        module = target.from_packed(self.packed(), self.bias)
        module.path, module.dispatch = self.path, self.dispatch
        return module

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        return layouts.dequantize(self.packed(), dtype)

    def forward(self, x: torch.Tensor, epilogue: Epilogue = "none") -> torch.Tensor:
        """``x @ W^T + bias``; ``epilogue="silu_mul"`` (a gated MLP's fused gate and up rows, in
        turn: ``fuse.py``) returns ``silu(gate) * up``, half as wide."""
        if torch.compiler.is_compiling():  # one opaque operator node for torch.compile (kernels/op.py)
            return op.linear(x, self.qweight, self.qzeros, self.scales, self.bias, self.layout,
                             self.in_features, self.out_features, self.group_size, self.path, self.dispatch,
                             epilogue)
        # Eager decode calls each layer with the same shapes over and over: the launch is kept
        # per (input shape, dtype, device, path, dispatch plan, epilogue) and repeated without
        # the dispatch; it takes x as it is and returns the output in its final shape.
        # New buffers or bias (assigned, loaded with assign=True, or moved by .to()) drop them
        # all, in __setattr__ and _apply; this path reads no buffer (each read costs ~1 us of
        # host time, and eager decode is bound by the host). The output is a fresh tensor that
        # does not require grad.
        key = (x.shape, x.dtype, x.get_device(), self.path, id(self.dispatch), epilogue)
        replay = self._replays.get(key)
        if replay is not None and x.is_contiguous() and x.data_ptr() % 16 == 0:
            return replay(x)
        packed = self.packed()  # rebuilt (and the kept launches dropped) if the buffers changed
        with torch.no_grad():
            out, replay = linear_with_replay(x, packed, self.bias, path=self.path,  # type: ignore[arg-type]
                                             plan=self.dispatch, epilogue=epilogue)
        if replay is not None:
            if len(self._replays) >= 64:  # prefill lengths vary: keep the table small
                self._replays.clear()
            self._replays[key] = replay
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, w_bit={self.w_bit}, group_size={self.group_size}, "
                f"kernel={self.kernel_name}, path={self.path}")


_BUFFERS = frozenset({"qweight", "qzeros", "scales", "bias"})


class AKSLinearGEMM(AWQLinear):
    """Drop-in for ``WQLinear_GEMM`` (checkpoint ``version="gemm"``)."""

    layout = "gemm"
    kernel_name = "aks_gemm"


class AKSLinearGEMV(AWQLinear):
    """Drop-in for ``WQLinear_GEMV`` (checkpoint ``version="gemv"``)."""

    layout = "gemv"
    kernel_name = "aks_gemv"


LAYOUT_CLASSES: dict[str, type[AWQLinear]] = {"gemm": AKSLinearGEMM, "gemv": AKSLinearGEMV}


def set_layout(model: nn.Module, layout: str) -> nn.Module:
    """Convert every packed layer of ``model`` to ``layout`` (lossless), in place."""
    for name, child in list(model.named_modules()):
        if isinstance(child, AWQLinear) and child.layout != layout:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, child.to_layout(layout))
    return model


def set_path(model: nn.Module, path: str) -> None:
    """Make every packed layer of ``model`` run ``path`` ("auto", "torch", ...)."""
    for child in model.modules():
        if isinstance(child, AWQLinear):
            child.path = path


def set_plan(model: nn.Module, plan: DispatchPlan | None) -> None:
    """Give every packed layer of ``model`` this dispatch plan (``Selection.plan``)."""
    for child in model.modules():
        if isinstance(child, AWQLinear):
            child.dispatch = plan


def drop_kept_launches(model: nn.Module) -> None:
    """Forget every kept launch: each packed layer's (eager) and the operator's (compiled), so
    that the next call of each layer plans and launches afresh; for after a setting a kept launch
    has baked in changed (``kernels.matmul.USE_PDL``). Buffers replaced through
    the module drop theirs already."""
    op.drop_kept()
    for child in model.modules():
        if isinstance(child, AWQLinear):
            child._replays.clear()
