"""Triton helpers that dequantize AutoAWQ's packed int4 words nibble by nibble.

A packed tile is never reshaped to ``[BLOCK_K, BLOCK_N]`` (a reshape of the unpacked nibbles
costs a trip through shared memory). Instead each of the 8 nibble positions ``c`` of a word is
taken in turn, with the same register layout as the loaded words:

* GEMM layout: nibble ``c`` of word ``[k, j]`` is output column ``8j + c`` (its bit offset is
  ``4 * REVERSE[c]``, ``REVERSE = [0, 4, 1, 5, 2, 6, 3, 7]``, from AutoAWQ's interleaved order
  ``[0, 2, 4, 6, 1, 3, 5, 7]``), so the kernel keeps one accumulator per ``c``;
* GEMV layout: nibble ``c`` of word ``[n, j]`` is input column ``8j + c``, so it meets the
  ``x`` values ``x[8j + c]`` and all 8 positions add into one accumulator.

int4 -> fp16 without a conversion instruction: ``0x6400 | q`` read as fp16 is ``1024 + q``
exactly, so ``(1024 + q) - (1024 + z)`` is the exact integer ``q - z``, and one multiply by the
scale rounds once, as AutoAWQ's own ``(q - z) * s`` does.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def nibble_as_f16_plus_1024(words, SHIFT: tl.constexpr):
    """``1024 + ((words >> SHIFT) & 0xF)`` as fp16, by bit pattern."""
    return (((words >> SHIFT) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def gemm_shift(C: tl.constexpr):
    """Bit offset of output column ``8j + C`` inside GEMM-layout word ``j``."""
    return 4 * (C // 2) + 16 * (C % 2)


@triton.jit
def dequant_gemm_nibble(q, zero_words, scales_ptr, offs_pn, mask_pn, C: tl.constexpr):
    """fp16 weights ``W[k, 8j + C]`` for a ``[BLOCK_K, BLOCK_N / 8]`` tile of GEMM-layout words.

    ``zero_words`` are the tile's qzeros words ``[BLOCK_N / 8]``; ``scales_ptr`` points at the
    tile's group row of ``scales``.
    """
    shift = gemm_shift(C)
    s = tl.load(scales_ptr + offs_pn * 8 + C, mask=mask_pn, other=0.0).to(tl.float16)
    z = nibble_as_f16_plus_1024(zero_words, shift)
    return (nibble_as_f16_plus_1024(q, shift) - z[None, :]) * s[None, :]


@triton.jit
def dequant_gemv_nibble(q, zeros_f16, scales_f16, C: tl.constexpr):
    """fp16 weights ``W[n, 8j + C]`` for a ``[BLOCK_N, BLOCK_K / 8]`` tile of GEMV-layout words.

    ``zeros_f16`` and ``scales_f16`` broadcast against the tile: ``[BLOCK_N, 1]`` when the tile
    lies in one group, ``[BLOCK_N, BLOCK_K / 8]`` when it spans several.
    """
    return (nibble_as_f16_plus_1024(q, 4 * C) - zeros_f16) * scales_f16


@triton.jit
def gemv_group_params(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                      GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr):
    """GEMV-layout zeros (as ``1024 + z`` fp16) and scales for the tile starting at column ``k0``."""
    if BLOCK_K <= GROUP_SIZE:  # one group: one value per row
        group = k0 // GROUP_SIZE
        zw = tl.load(qzeros_ptr + offs_n * stride_qzeros + group // 8, mask=mask_n, other=0)
        z = (((zw >> ((group % 8) * 4)) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        s = tl.load(scales_ptr + offs_n * stride_scales + group, mask=mask_n, other=0.0).to(tl.float16)
        return z[:, None], s[:, None]
    else:  # several groups: one value per packed column j (8 columns never straddle a group)
        group = (k0 + 8 * tl.arange(0, BLOCK_K // 8)) // GROUP_SIZE
        zw = tl.load(qzeros_ptr + offs_n[:, None] * stride_qzeros + (group // 8)[None, :],
                     mask=mask_n[:, None], other=0)
        z = (((zw >> ((group % 8) * 4)[None, :]) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        s = tl.load(scales_ptr + offs_n[:, None] * stride_scales + group[None, :],
                    mask=mask_n[:, None], other=0.0).to(tl.float16)
        return z, s
