"""The packed linear as a PyTorch operator, so that ``torch.compile`` can take a model.

Dynamo cannot trace into a Triton launch made from Python (the dispatch, the kept launches,
the raw-pointer launcher), so under ``torch.compile`` the modules call
``torch.ops.awq_kernel_select.linear`` instead: an opaque node whose output shape is known
without running it. Inductor then fuses everything around the linears (norms, rotary
embeddings, residual adds; SiLU x up where the MLP is not a ``fuse.GatedMLP``, whose gate/up
call makes it in the kernel: the ``epilogue`` argument) and calls the operator in their place. Outside
``torch.compile`` the modules keep calling the kernels directly.

The operator is registered with ``torch.library.Library`` rather than ``custom_op``: the
latter's autograd and aliasing wrappers cost ~45 us per call, more than the kernel, when a
compiled model runs without CUDA graphs. For the same reason the launch of each (layer, call
shape) is kept and repeated, as the modules do; a kept launch is used only while the layer's
own tensors (checked by weak reference) are the ones passed in. Inference only: the operator
has no backward.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch

from ..layouts import PackedWeights
from . import attention
from .dispatch import DispatchPlan, linear_with_replay
from .matmul import Replay
from .reference import Epilogue, output_width

SCHEMA = ("linear(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, Tensor? bias, str layout, "
          "int in_features, int out_features, int group_size, str path, int plan=0, str epilogue=\"none\") -> Tensor")

_library: Any = torch.library  # its functions carry no type hints
ATTENTION_SCHEMA = "decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor"

#: The plans the operator was called with, by handle (an operator takes no objects); a plan
#: lives as long as the process (there is one per GPU and setting).
_PLANS: dict[int, DispatchPlan] = {}

_LIBRARY = _library.Library("awq_kernel_select", "DEF")
_LIBRARY.define(SCHEMA)
_LIBRARY.define(ATTENTION_SCHEMA)

_MAX_KEPT = 4096
_KEPT: dict[tuple[Any, ...], tuple[tuple[weakref.ref[torch.Tensor] | None, ...], Replay]] = {}


def drop_kept() -> None:
    """Forget every kept launch of the operator (the next call of each layer plans afresh)."""
    _KEPT.clear()


def plan_handle(plan: DispatchPlan | None) -> int:
    """A dispatch plan as the operator's ``plan`` argument (0: the plan of the input's device)."""
    if plan is None:
        return 0
    _PLANS[id(plan)] = plan
    return id(plan)


def inductor_pdl() -> bool:
    """Whether inductor emits programmatic dependent launch (``TORCHINDUCTOR_ENABLE_PDL=1``):
    then the operator's launches take part too. PDL pays only in a chain of kernels that all
    use it: ours alone made a compiled decode step 1.8% slower, ours with inductor's 4% faster
    (H100, docs/benchmarks.md)."""
    config = sys.modules.get("torch._inductor.config")  # not imported here: only compiled code sets it
    triton_config = getattr(config, "triton", None)
    return bool(getattr(triton_config, "enable_pdl", False))


def _same(refs: tuple[weakref.ref[torch.Tensor] | None, ...], tensors: tuple[torch.Tensor | None, ...]) -> bool:
    return all((r is None and t is None) or (r is not None and r() is t) for r, t in zip(refs, tensors))


def _linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
            bias: torch.Tensor | None, layout: str, in_features: int, out_features: int, group_size: int,
            path: str, plan: int = 0, epilogue: str = "none") -> torch.Tensor:
    """``x [..., K] @ W^T + bias``, then ``epilogue``, for one packed layer: what
    :func:`awq_linear` computes, on the plan whose handle is ``plan``."""
    layer = (qweight, qzeros, scales, bias)
    pdl = inductor_pdl()
    key = (*(0 if t is None else t.data_ptr() for t in layer), x.shape, x.dtype, x.device, path, plan, pdl, epilogue)
    kept = _KEPT.get(key)
    if kept is not None and _same(kept[0], layer) and x.is_contiguous() and x.data_ptr() % 16 == 0:
        return kept[1](x)  # the output in its final shape
    weights = PackedWeights(layout, qweight, qzeros, scales, in_features, out_features, group_size)
    out, replay = linear_with_replay(x, weights, bias, path=path, plan=_PLANS.get(plan), pdl=pdl,  # type: ignore[arg-type]
                                     epilogue=epilogue)  # type: ignore[arg-type]
    if replay is not None:
        if len(_KEPT) >= _MAX_KEPT:
            _KEPT.clear()
        forget = lambda _ref: _KEPT.pop(key, None)  # noqa: E731  (the layer is gone)
        refs = tuple(None if t is None else weakref.ref(t, forget) for t in layer)
        _KEPT[key] = (refs, replay)
    return out


_LIBRARY.impl("linear", _linear, "CPU")
_LIBRARY.impl("linear", _linear, "CUDA")


def _linear_shape(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None, layout: str, in_features: int, out_features: int,
                  group_size: int, path: str, plan: int = 0, epilogue: str = "none") -> torch.Tensor:
    check: Any = torch._check
    check(x.shape[-1] == in_features, lambda: f"input has {x.shape[-1]} features, the layer expects {in_features}")
    return x.new_empty((*x.shape[:-1], output_width(out_features, epilogue)))


_library.register_fake("awq_kernel_select::linear")(_linear_shape)


def linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
           bias: torch.Tensor | None, layout: str, in_features: int, out_features: int, group_size: int,
           path: str = "auto", plan: DispatchPlan | None = None, epilogue: Epilogue = "none"
           ) -> torch.Tensor:
    """Call the operator (what the modules do under ``torch.compile``)."""
    out: torch.Tensor = torch.ops.awq_kernel_select.linear(x, qweight, qzeros, scales, bias, layout, in_features,
                                                       out_features, group_size, path, plan_handle(plan),
                                                       epilogue)
    return out


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
    """One query token per sequence against the KV cache (``kernels/attention.py``), launched
    with PDL where inductor uses it and the device's plan says the GPU has it."""
    return attention.decode_attention(q, k, v, mask, scale, pdl=inductor_pdl())


def _decode_attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            scale: float) -> torch.Tensor:
    batch, heads, _, head_dim = q.shape
    return q.new_empty((batch, 1, heads, head_dim))


_LIBRARY.impl("decode_attention", _decode_attention, "CPU")
_LIBRARY.impl("decode_attention", _decode_attention, "CUDA")
_library.register_fake("awq_kernel_select::decode_attention")(_decode_attention_shape)
