"""The plain-torch path: dequantize, then matmul. Runs anywhere; the tests' oracle on CPU."""

from __future__ import annotations

import torch

from ..layouts import PackedWeights, dequantize


def reference_linear(x: torch.Tensor, weights: PackedWeights, bias: torch.Tensor | None,
                     compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x @ W^T + bias`` with ``W`` dequantized by :func:`layouts.dequantize`.

    On the CPU the arithmetic is float32 (fp16 matmuls there are slow and not what a GPU does);
    pass ``compute_dtype=torch.float64`` for the reference that kernels are checked against.
    """
    dtype = compute_dtype or (torch.float32 if x.device.type == "cpu" else x.dtype)
    w = dequantize(weights, dtype=dtype)
    out = torch.nn.functional.linear(x.to(dtype), w, None if bias is None else bias.to(dtype))
    return out if compute_dtype is not None else out.to(x.dtype)
