"""Dequantize a whole packed layer to fp16 or bf16 in one pass, for the large-M path (then cuBLAS).

At many tokens per forward the matmul is compute-bound and cuBLAS's GEMM beats a fused
kernel; writing the 16-bit weight once costs ``K * N * 2`` bytes, small beside the matmul.
bf16 weights are ``(q - z) * bf16(s)`` rounded once, as the fused kernels make them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import launch
from .tiles import dequant_gemm_layout_tile, dequant_gemv_layout_tile


@triton.jit
def dequantize_kernel(
    qweight_ptr, qzeros_ptr, scales_ptr, out_ptr, K, N,
    stride_qweight, stride_qzeros, stride_scales, stride_out,
    GEMV_LAYOUT: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    BF16: tl.constexpr,
):
    """W ``[N, K]`` from the GEMV layout, W^T ``[K, N]`` from the GEMM layout: contiguous stores."""
    k0 = tl.program_id(0) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if GEMV_LAYOUT:
        w = dequant_gemv_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_n, k0, K, N,
                                     stride_qweight, stride_qzeros, stride_scales,
                                     GROUP_SIZE, BLOCK_K, BLOCK_N, BF16)
        tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], w,
                 mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))
    else:
        w = dequant_gemm_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_k, tl.program_id(1), k0, K, N,
                                     stride_qweight, stride_qzeros, stride_scales,
                                     GROUP_SIZE, BLOCK_K, BLOCK_N, BF16)
        tl.store(out_ptr + offs_k[:, None] * stride_out + offs_n[None, :], w,
                 mask=(offs_k[:, None] < K) & (offs_n[None, :] < N))


def dequantize_triton(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *,
    gemv_layout: bool, in_features: int, out_features: int, group_size: int,
    out: torch.Tensor | None = None, block_k: int = 64, block_n: int = 64, num_warps: int = 4,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """The weight in ``dtype`` (fp16 or bf16): ``[N, K]`` for the GEMV layout, ``[K, N]``
    (= W^T) for the GEMM layout.

    The packed tensors may be row (GEMV layout) or column (GEMM layout) slices of a larger
    layer: only their strides are used. ``out``, if given, receives the weight.
    """
    K, N = in_features, out_features
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dequantize to float16 or bfloat16, not {dtype}")
    block_k = min(group_size, block_k)
    shape = (N, K) if gemv_layout else (K, N)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=qweight.device)
    elif tuple(out.shape) != shape or out.stride(-1) != 1 or out.dtype != dtype:
        raise ValueError(f"out must be a row-contiguous {dtype} {shape} tensor, got {tuple(out.shape)} {out.dtype}")
    launch(dequantize_kernel, (-(-K // block_k), -(-N // block_n), 1),
           (qweight, qzeros, scales, out, K, N,
            qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0)),
           dict(GEMV_LAYOUT=gemv_layout, GROUP_SIZE=group_size, BLOCK_K=block_k, BLOCK_N=block_n,
                BF16=dtype == torch.bfloat16),
           num_warps, 2)
    return out
