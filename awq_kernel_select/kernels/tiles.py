"""Triton helpers: load one tile of AutoAWQ's packed weights and dequantize it in registers.

Both helpers need the tile to lie inside one quantization group (``BLOCK_K <= GROUP_SIZE``;
the launchers guarantee it), so the scales and zeros of a tile are one row of values.

int4 -> fp16 without an int-to-float conversion: ``0x6400 | q`` read as fp16 is ``1024 + q``
exactly, so ``(1024 + q) - (1024 + z)`` is the exact integer ``q - z`` in fp16, and a single
multiply by the scale rounds once, as AutoAWQ's own ``(q - z) * s`` does.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def int4_to_f16_plus_1024(q):
    """``1024 + q`` as fp16 for int32 ``q`` in 0..15 (bit trick, no conversion instruction)."""
    return (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def dequant_gemm_layout_tile(
    qweight_ptr, qzeros_ptr, scales_ptr,
    offs_k, pid_n, k0, K, N,
    stride_qweight, stride_qzeros, stride_scales,
    GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """fp16 ``W[k, n]`` for rows ``offs_k`` and the ``pid_n``-th block of ``BLOCK_N`` columns.

    GEMM layout: ``qweight [K, N/8]``, nibble ``i`` of a word holds column ``8j + ORDER[i]``,
    ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``; so column ``8j + c`` sits at shift
    ``4 * REVERSE[c] = 4 * (c // 2) + 16 * (c % 2)``.
    """
    offs_pn = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)  # packed columns
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_pn = offs_pn < N // 8
    q = tl.load(
        qweight_ptr + offs_k[:, None] * stride_qweight + offs_pn[None, :],
        mask=(offs_k[:, None] < K) & mask_pn[None, :], other=0,
    )
    group = k0 // GROUP_SIZE
    z = tl.load(qzeros_ptr + group * stride_qzeros + offs_pn, mask=mask_pn, other=0)
    s = tl.load(scales_ptr + group * stride_scales + offs_n, mask=offs_n < N, other=0.0)

    c = tl.arange(0, 8)
    shifts = 4 * (c // 2) + 16 * (c % 2)
    q = tl.reshape((q[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_K, BLOCK_N))
    z = tl.reshape((z[:, None] >> shifts[None, :]) & 0xF, (BLOCK_N,))
    w = (int4_to_f16_plus_1024(q) - int4_to_f16_plus_1024(z)[None, :]) * s.to(tl.float16)[None, :]
    return w  # [BLOCK_K, BLOCK_N]


@triton.jit
def dequant_gemv_layout_tile(
    qweight_ptr, qzeros_ptr, scales_ptr,
    offs_n, k0, K, N,
    stride_qweight, stride_qzeros, stride_scales,
    GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """fp16 ``W[n, k]`` (transposed tile) for rows ``offs_n`` and columns ``k0 .. k0+BLOCK_K``.

    GEMV layout: ``qweight [N, K/8]`` with nibble ``i`` holding column ``8j + i``;
    ``qzeros [N, Z]`` packs the zero of group ``g`` in word ``g // 8``, nibble ``g % 8``;
    ``scales [N, 8Z]`` holds group ``g`` in column ``g``.
    """
    offs_pk = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    mask_n = offs_n < N
    q = tl.load(
        qweight_ptr + offs_n[:, None] * stride_qweight + offs_pk[None, :],
        mask=mask_n[:, None] & (offs_pk[None, :] < K // 8), other=0,
    )
    group = k0 // GROUP_SIZE
    z = tl.load(qzeros_ptr + offs_n * stride_qzeros + group // 8, mask=mask_n, other=0)
    z = (z >> ((group % 8) * 4)) & 0xF
    s = tl.load(scales_ptr + offs_n * stride_scales + group, mask=mask_n, other=0.0)

    shifts = 4 * tl.arange(0, 8)
    q = tl.reshape((q[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_N, BLOCK_K))
    w = (int4_to_f16_plus_1024(q) - int4_to_f16_plus_1024(z)[:, None]) * s.to(tl.float16)[:, None]
    return w  # [BLOCK_N, BLOCK_K]
