"""The plain-torch path: dequantize, then matmul. Runs anywhere; the tests' oracle on CPU."""

from __future__ import annotations

from typing import Literal

import torch

from ..layouts import PackedWeights, dequantize


#: What runs on a packed linear's output before it is returned: nothing, or ``silu_mul`` for a
#: layer whose rows are a gated MLP's gate and up rows in turn (``fuse.py``): ``silu(gate) * up``,
#: half as wide. The GEMV layout's kernel makes it in its epilogue; the other paths in torch.
Epilogue = Literal["none", "silu_mul"]
EPILOGUES: tuple[Epilogue, ...] = ("none", "silu_mul")


def output_width(out_features: int, epilogue: Epilogue | str) -> int:
    """The width of a layer's output after ``epilogue`` (``silu_mul`` halves it)."""
    return out_features // 2 if epilogue == "silu_mul" else out_features


def apply_epilogue(out: torch.Tensor, epilogue: Epilogue | str) -> torch.Tensor:
    """``epilogue`` on a layer's whole output ``[..., N]`` (in its dtype)."""
    if epilogue == "none":
        return out
    if epilogue == "silu_mul":
        gate, up = out.reshape(*out.shape[:-1], -1, 2).unbind(-1)
        gated: torch.Tensor = torch.nn.functional.silu(gate) * up
        return gated
    raise ValueError(f"unknown epilogue {epilogue!r}: one of {', '.join(EPILOGUES)}")


def reference_linear(x: torch.Tensor, weights: PackedWeights, bias: torch.Tensor | None,
                     compute_dtype: torch.dtype | None = None, epilogue: Epilogue | str = "none") -> torch.Tensor:
    """``x @ W^T + bias`` with ``W`` dequantized by :func:`layouts.dequantize`, then ``epilogue``.

    On the CPU the arithmetic is float32 (fp16 matmuls there are slow and not what a GPU does);
    pass ``compute_dtype=torch.float64`` for the reference that kernels are checked against.
    """
    dtype = compute_dtype or (torch.float32 if x.device.type == "cpu" else x.dtype)
    w = dequantize(weights, dtype=dtype)
    out = apply_epilogue(torch.nn.functional.linear(x.to(dtype), w, None if bias is None else bias.to(dtype)),
                         epilogue)
    return out if compute_dtype is not None else out.to(x.dtype)
