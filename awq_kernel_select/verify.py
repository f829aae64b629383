"""A load-time self-check: each distinct layer of a loaded model runs its kernel on random input and
is compared with a float64 reference built from the same packed weights.

``load_quantized(..., verify=True)`` calls :func:`verify_layers`; a layer whose relative error
exceeds its kernel's bound raises :class:`VerifyError` naming the layer, the kernel and the error.
Layers of the same class, layout, shape, group size and path are checked once. The bounds are those
the test suite holds the kernels to against float64 (fp16 activations: 2e-3, bf16: 1.5e-2; the
kernels measure 2e-4 to 5e-4 in fp16, docs/kernels.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels.reference import reference_linear
from .modules import AWQLinear

#: relative error vs float64 a layer may have, by activation dtype
BOUNDS = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float32: 2e-3}
#: tokens per forward each layer is checked at: one token (decode) and a small batch
TOKENS = (1, 16)


class VerifyError(RuntimeError):
    """A layer's kernel disagrees with the float64 reference beyond its bound."""


@dataclass(frozen=True)
class LayerCheck:
    layer: str
    kernel: str
    tokens: int
    rel_error: float
    bound: float


def verify_layers(model: torch.nn.Module, *, dtype: torch.dtype | None = None, seed: int = 0) -> list[LayerCheck]:
    """Check one layer of each distinct kind in ``model``; returns what was checked, raises
    :class:`VerifyError` at the first layer over its bound. ``dtype``: the activations' dtype
    (default: the layer's scales' dtype, what the model computes in)."""
    checks: list[LayerCheck] = []
    seen: set[tuple[object, ...]] = set()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, module in model.named_modules():
        if not isinstance(module, AWQLinear) or module.qweight.is_meta:  # offloaded: its weights are not here
            continue
        kind = (type(module), module.layout, module.in_features, module.out_features, module.group_size, module.path)
        if kind in seen:
            continue
        seen.add(kind)
        act = dtype or module.scales.dtype
        bound = BOUNDS.get(act, 2e-3)
        for tokens in TOKENS:
            x = torch.randn(tokens, module.in_features, generator=gen).to(device=module.qweight.device, dtype=act)
            with torch.no_grad():
                out = module(x)
                ref = reference_linear(x, module.packed(), module.bias, compute_dtype=torch.float64)
            error = float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))
            kernel = module.kernel_name if module.path == "auto" else f"{module.kernel_name}:{module.path}"
            if not error <= bound:  # NaN fails too
                raise VerifyError(f"{name}: {kernel} gives relative error {error:.2e} against the float64 reference "
                                  f"(bound {bound:.0e}) at {tokens} token(s), {module.in_features} -> "
                                  f"{module.out_features}: this kernel is wrong on this machine; load with "
                                  "kernel='torch_dequant' and report it")
            checks.append(LayerCheck(name, kernel, tokens, error, bound))
    return checks
