"""Dequantize a whole packed layer to fp16 in one pass, for the large-M path (then cuBLAS).

At many tokens per forward the matmul is compute-bound and cuBLAS's fp16 GEMM beats a fused
kernel; writing the fp16 weight once costs ``K * N * 2`` bytes, small beside the matmul.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import dequant_gemm_nibble, dequant_gemv_nibble, gemv_group_params


@triton.jit
def dequantize_gemm_layout_kernel(
    qweight_ptr, qzeros_ptr, scales_ptr, out_ptr, K, N,
    stride_qweight, stride_qzeros, stride_scales, stride_out,
    GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """W^T ``[K, N]`` from the GEMM layout."""
    k0 = tl.program_id(0) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    offs_pn = tl.program_id(1) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    mask_pn = offs_pn < N // 8
    mask = (offs_k[:, None] < K) & mask_pn[None, :]
    q = tl.load(qweight_ptr + offs_k[:, None] * stride_qweight + offs_pn[None, :], mask=mask, other=0)
    group = k0 // GROUP_SIZE
    zero_words = tl.load(qzeros_ptr + group * stride_qzeros + offs_pn, mask=mask_pn, other=0)
    for c in tl.static_range(8):
        w = dequant_gemm_nibble(q, zero_words, scales_ptr + group * stride_scales, offs_pn, mask_pn, c)
        tl.store(out_ptr + offs_k[:, None] * stride_out + (offs_pn * 8 + c)[None, :], w, mask=mask)


@triton.jit
def dequantize_gemv_layout_kernel(
    qweight_ptr, qzeros_ptr, scales_ptr, out_ptr, K, N,
    stride_qweight, stride_qzeros, stride_scales, stride_out,
    GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """W ``[N, K]`` from the GEMV layout."""
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_pk = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    mask_n = offs_n < N
    mask = mask_n[:, None] & (offs_pk[None, :] < K // 8)
    q = tl.load(qweight_ptr + offs_n[:, None] * stride_qweight + offs_pk[None, :], mask=mask, other=0)
    zeros, scales = gemv_group_params(qzeros_ptr, scales_ptr, offs_n, mask_n, k0,
                                      stride_qzeros, stride_scales, GROUP_SIZE, BLOCK_K)
    for c in tl.static_range(8):
        w = dequant_gemv_nibble(q, zeros, scales, c)
        tl.store(out_ptr + offs_n[:, None] * stride_out + (offs_pk * 8 + c)[None, :], w, mask=mask)


def dequantize_triton(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *,
    gemv_layout: bool, in_features: int, out_features: int, group_size: int,
) -> torch.Tensor:
    """fp16 weight: ``[N, K]`` for the GEMV layout, ``[K, N]`` (= W^T) for the GEMM layout."""
    K, N = in_features, out_features
    block_k = min(group_size, 64) if not gemv_layout else 64
    block_n = 128 if not gemv_layout else 64
    out = torch.empty((N, K) if gemv_layout else (K, N), dtype=torch.float16, device=qweight.device)
    kernel = dequantize_gemv_layout_kernel if gemv_layout else dequantize_gemm_layout_kernel
    kernel[(triton.cdiv(K, block_k), triton.cdiv(N, block_n))](
        qweight, qzeros, scales, out, K, N,
        qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
        GROUP_SIZE=group_size, BLOCK_K=block_k, BLOCK_N=block_n,
    )
    return out
