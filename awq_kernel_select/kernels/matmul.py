"""The fused int4 matmul: ``out = x @ W^T + bias`` with ``W`` dequantized in registers.

History that shaped it (H100 sweeps and SASS counts, docs/kernels.md): the GEMV layout's
one-token path for fp16 x decodes two words at a time in fp16x2 pairs and dots them with x's
fp16x2 pairs (``tiles.dot16_f16x2``); for bf16 x and for two or four tokens the words are decoded
once into pairs and dotted with each token's (``tiles.decode16_pairs``, ``tiles.dot16_pairs``); the
other FMA paths use the fp32 bit trick of ``tiles.py`` nibble by nibble; all through small PTX
helpers on the GPU; the ``tl.dot`` paths decode each
packed word in fp16x2 pairs (Marlin's LOP3 trick). In this memory-bound regime the instruction
count per weight sets the speed (an SM has to take ~23 weights per clock): 6.1 -> 4.5 -> 2.7-3.2
SASS instructions per weight took the GEMV layout at M = 1 from 50% to 56-59% to 77% of
bandwidth on the 70B MLP shapes; 9 -> 4 took M = 16 from ~1x to 1.5-1.9x fp16.

One kernel per packed layout; each serves both regimes, chosen by its meta-parameters:

* **GEMV regime** (decode, M = 1..16): memory-bound. ``split_k`` programs share each block of
  output columns so that every SM streams weights even when N is small. ``BLOCK_M < 16`` runs
  FMAs (GEMV layout: 1, 2, 4 or 8 tokens per program, each weight read once; GEMM layout: one
  token per program), ``BLOCK_M >= 16`` a ``tl.dot`` (optionally ``W_FIRST``:
  ``out^T = W @ x^T``, measured faster). Partial sums meet in an fp32 workspace through
  atomics, and the last program of a tile (counted with an atomic ticket) writes the output
  and puts the workspace and its ticket back to zero: one launch, no memset.
* **GEMM regime** (batched decode, prefill): ``tl.dot`` tiles of 16-128 rows, with split-K
  where the tuned table says so (batched decode is still memory-bound).

The GEMV layout's kernel can end in a gated epilogue (``SILU_MUL``): for a layer whose rows are
a SwiGLU MLP's gate and up rows in turn (``fuse.py``), the program that writes an output tile
writes ``silu(gate) * up``, half as wide.

Grid: ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), split_k)``; with ``interleave_k`` (GEMV layout, the
M = 1 tiles of the H100 table) ``(split_k, cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))``, split ``s``
taking the K tiles ``s, s + split_k, ...``: the programs that run at one time then read
neighbouring tiles of each packed row. Launches go through ``launch.py``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

from .launch import Launcher, interpreting, launch
from .scratch import current_stream, persistent_zeros
from .tiles import (
    bf16_in_f32,
    dequant_gemm_words,
    dequant_gemv_words,
    decode16_pairs,
    dot16_f16x2,
    dot16_pairs,
    dot8_one_plus_q16,
    dot8x2_one_plus_q16,
    fold_zero_into_scale,
    gemv_group_scales_f32,
    gemv_group_zero_pairs,
    gemv_group_zero_scale,
    nibble_of_output,
    nibble_as_f32_one_plus_q16,
    nibble_fma,
    x_pairs,
)

try:  # programmatic dependent launch (sm90+): Triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # then PDL stays off and these are never compiled
    gdc_launch_dependents = gdc_wait = None

#: this Triton has the PDL instructions (whether the GPU has them is the dispatch plan's to say)
TRITON_HAS_PDL = gdc_wait is not None


@dataclass(frozen=True)
class MatmulConfig:
    """Tile shape of one launch. ``block_m`` < 16 means FMAs (the GEMM layout: 1 token per
    program; the GEMV layout: 1, 2, 4 or 8 tokens per program), >= 16 a ``tl.dot``; ``w_first``
    (``tl.dot``) computes ``out^T = W @ x^T`` so that the weight tile is the left
    operand; ``prefetch`` (the GEMV layout's FMA paths of one, two or four tokens and the
    ``tl.dot`` paths of both layouts) loads the next tile's words (and its zeros and scales, for
    ``tl.dot``) one iteration early. ``interleave_k`` (GEMV layout): split ``s`` takes the K tiles ``s, s + split_k, ...``
    instead of one stretch of K, and the grid is launched in ``(k, m, n)`` order, so that the
    programs running at one time read neighbouring tiles of each packed row [n, :]."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    w_first: bool = False
    prefetch: bool = False
    interleave_k: bool = False
    a_regs: bool = False  # the wgmma tile only (kernels/hopper.py): the weights in wgmma's A registers

    def __str__(self) -> str:
        return (f"BM{self.block_m}/BN{self.block_n}/BK{self.block_k}/S{self.split_k}"
                f"/w{self.num_warps}/s{self.num_stages}{'/WF' if self.w_first else ''}"
                f"{'/PF' if self.prefetch else ''}{'/IK' if self.interleave_k else ''}{'/AR' if self.a_regs else ''}")

    def takes_pairs(self, gemv_layout: bool) -> bool:
        """The tile can run the pair paths (GEMV layout, one, two or four tokens, K tiles of
        whole int64 pairs of words); the launcher also asks for fp16 or bf16 x and 8-byte aligned
        words."""
        return gemv_layout and self.block_m in (1, 2, 4) and self.block_k % 16 == 0

    def check(self, gemv_layout: bool, group_size: int) -> None:
        """Raise ``ValueError`` if the kernel cannot run this tile shape."""
        bm, bn, bk = self.block_m, self.block_n, self.block_k
        if bk % 8 or bn % 8:
            raise ValueError(f"{self}: BLOCK_N and BLOCK_K must be multiples of 8")
        fma = bm < 16
        if fma and bm not in ((1, 2, 4, 8) if gemv_layout else (1,)):
            raise ValueError(f"{self}: BLOCK_M is {'1, 2, 4 or 8' if gemv_layout else '1'} (FMA) "
                             "or >= 16 (tl.dot)")
        if gemv_layout and bm == 1 and bk % 16:
            raise ValueError(f"{self}: the one-token path takes words two at a time: BLOCK_K % 16 == 0")
        if gemv_layout and fma:  # nibble-wise FMA: a tile may span several groups
            if bk > group_size and bk % group_size or bk < group_size and group_size % bk:
                raise ValueError(f"{self}: BLOCK_K and group_size={group_size} must divide one another")
        elif bk > group_size or group_size % bk:  # whole tiles lie inside one group
            raise ValueError(f"{self}: BLOCK_K must divide group_size={group_size}")
        if not fma and (bn < 16 or bk < 16):
            raise ValueError(f"{self}: the tl.dot path needs BLOCK_N, BLOCK_K >= 16")
        if self.prefetch and fma and (bm > 4 or not gemv_layout):
            raise ValueError(f"{self}: prefetch is for tl.dot (BLOCK_M >= 16) and the GEMV layout's "
                             "FMA paths of one, two or four tokens (BLOCK_M = 1, 2, 4)")
        if self.w_first and fma:
            raise ValueError(f"{self}: w_first is for the tl.dot path (BLOCK_M >= 16)")
        if self.interleave_k and not gemv_layout:
            raise ValueError(f"{self}: interleave_k is for the GEMV layout (qweight [N, K/8])")
        if self.a_regs:
            raise ValueError(f"{self}: a_regs is for the wgmma tile (path 'wgmma', kernels/hopper.py)")


def pair_block_m(m: int) -> int:
    """``BLOCK_M`` of the GEMV layout's pair tile for ``m`` <= 4 tokens: every token in one
    program, 1 or 2 as they are, 3 and 4 on the four-token path (at 3 it dots three)."""
    return m if m <= 2 else 4


# --- programmatic dependent launch --------------------------------------------------------------


@triton.jit
def _wait_for_previous_kernel(PDL: tl.constexpr):
    """With PDL: block until the previous kernel has finished and its writes are visible, then
    let the next kernel in the stream be scheduled. Before this only the layer's own buffers may
    be read (no kernel writes them); x, the output and the split-K scratch come after.

    The next kernel is let go only after the wait, never before: a kernel that does not read
    this one's output may skip its own wait (inductor's PDL code does: it waits only for
    buffers the kernel just before it wrote), and is then safe only if everything before this
    kernel has finished when it starts."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


# --- epilogue ----------------------------------------------------------------------------------


@triton.jit
def _silu_mul(total, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The gated epilogue of a layer whose rows are gate and up rows in turn (``fuse.py``):
    ``silu(total[:, 2j]) * total[:, 2j + 1]`` in fp32, and the output column ``j`` of each
    (``cols [1, BLOCK_N]``: the tile's own columns). Returns ``[BLOCK_M, BLOCK_N / 2]`` twice."""
    gate, up = tl.split(tl.reshape(total, (BLOCK_M, BLOCK_N // 2, 2)))
    even, _ = tl.split(tl.reshape(cols, (1, BLOCK_N // 2, 2)))
    return gate * tl.sigmoid(gate) * up, even // 2


@triton.jit
def _store_output(total, rows, cols, M, N, out_ptr, bias_ptr, stride_om, HAS_BIAS: tl.constexpr,
                  SILU_MUL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Write the finished sums ``total`` at output ``[rows, cols]`` (index tensors that
    broadcast against it), bias added. ``SILU_MUL``: ``total`` is ``[BLOCK_M, BLOCK_N]``, its
    columns gate and up in turn, and ``[rows, cols / 2]`` receives ``silu(gate) * up``."""
    if HAS_BIAS:
        total += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    mask = (rows < M) & (cols < N)
    if SILU_MUL:  # (masked elements may hold anything, e.g. a masked atomic's result: no exp of it)
        total, cols = _silu_mul(tl.where(mask, total, 0.0), cols, BLOCK_M, BLOCK_N)
        mask = (rows < M) & (cols < N // 2)
    if out_ptr.dtype.element_ty == tl.bfloat16:  # rounded here: exact under the interpreter too
        total = bf16_in_f32(total)
    tl.store(out_ptr + rows * stride_om + cols, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _emit_columns(acc, cols, rows, M, N, out_ptr, workspace_ptr, bias_ptr, stride_om,
                  HAS_BIAS: tl.constexpr, USE_SPLIT_K: tl.constexpr, SILU_MUL: tl.constexpr = False,
                  BLOCK_M: tl.constexpr = 1, BLOCK_N: tl.constexpr = 1):
    """Store ``acc`` at output ``[rows, cols]`` (``_store_output``), or add it to the workspace."""
    if USE_SPLIT_K:
        tl.atomic_add(workspace_ptr + rows * N + cols, acc, mask=(rows < M) & (cols < N),
                      sem="relaxed")  # ordered by the ticket
    else:
        _store_output(acc, rows, cols, M, N, out_ptr, bias_ptr, stride_om, HAS_BIAS, SILU_MUL, BLOCK_M, BLOCK_N)


@triton.jit
def _output_tile(GRID_K_FIRST: tl.constexpr):
    """The number of this program's output tile: which split-K ticket it takes.

    Where it is computed changes the K loop's SASS. The GEMM layout computes it after the loop:
    held in a register through the loop it cost the M = 16 tiles ~10 registers. The GEMV layout
    computes it before the loop: after it, the M = 1 tiles that prefetch and interleave K ran
    12-23% slower on the H100 (same registers, the two builds timed in one process), and its M = 16 tiles
    time the same either way."""
    if GRID_K_FIRST:  # grid (k, m, n)
        return tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
    else:  # grid (m, n, k)
        return tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)


@triton.jit
def _finish_split_k(offs_m, offs_n, M, N, out_ptr, workspace_ptr, tickets_ptr, tile, bias_ptr, stride_om,
                    split_k, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    SILU_MUL: tl.constexpr = False):
    """After this program's partial sums are in: the last split of output tile number ``tile``
    writes the output (``_store_output``)."""
    tl.debug_barrier()  # every thread's partial sum is in before the ticket is taken
    ticket_ptr = tickets_ptr + tile
    if tl.atomic_add(ticket_ptr, 1) == split_k - 1:
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        partial_ptrs = workspace_ptr + offs_m[:, None] * N + offs_n[None, :]
        zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        total = tl.atomic_add(partial_ptrs, zero, mask=mask)  # a coherent read of the sums
        tl.store(partial_ptrs, zero, mask=mask)
        tl.atomic_xchg(ticket_ptr, 0)
        _store_output(total, offs_m[:, None], offs_n[None, :], M, N, out_ptr, bias_ptr, stride_om, HAS_BIAS,
                      SILU_MUL, BLOCK_M, BLOCK_N)


@triton.jit
def _load_gemv_words(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight,
                     BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The GEMV layout's words ``[offs_n, k0 / 8 ...]``, zero from ``k_end`` on (16-byte loads
    when ``EVEN_K``: tiles never straddle K), streamed past L2 (``evict_first``)."""
    offs_pk = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    ptrs = qweight_ptr + offs_n[:, None] * stride_qweight + offs_pk[None, :]
    if EVEN_K:
        inside = tl.full((1, BLOCK_K // 8), k0, tl.int32) < k_end  # one value: keeps the 16-byte loads
        return tl.load(ptrs, mask=mask_n[:, None] & inside, other=0, eviction_policy="evict_first")
    else:
        return tl.load(ptrs, mask=mask_n[:, None] & (offs_pk[None, :] < k_end // 8), other=0,  # k_end <= K
                       eviction_policy="evict_first")


@triton.jit
def _load_gemv_word_pairs(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight,
                          BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """``_load_gemv_words`` as int64: each holds two neighbouring words (the even one low). The
    rows are 8-byte aligned (``stride_qweight`` even: K is a multiple of the group size)."""
    offs_pj = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    ptrs = qweight_ptr.to(tl.pointer_type(tl.int64)) + offs_n[:, None] * (stride_qweight // 2) + offs_pj[None, :]
    if EVEN_K:
        inside = tl.full((1, BLOCK_K // 16), k0, tl.int32) < k_end  # one value: keeps the 16-byte loads
        return tl.load(ptrs, mask=mask_n[:, None] & inside, other=0, eviction_policy="evict_first")
    else:
        return tl.load(ptrs, mask=mask_n[:, None] & (offs_pj[None, :] < k_end // 16), other=0,
                       eviction_policy="evict_first")


@triton.jit
def _load_fma_words(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight,
                    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, PAIRS: tl.constexpr):
    """The FMA paths' words: int32 (``_load_gemv_words``) or int64 pairs (``PAIRS``)."""
    if PAIRS:
        return _load_gemv_word_pairs(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight, BLOCK_K, EVEN_K)
    else:
        return _load_gemv_words(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight, BLOCK_K, EVEN_K)


@triton.jit
def _dot_operand(x, EMULATE: tl.constexpr):
    """x as a ``tl.dot`` operand: bf16 stays bf16 (its values may be beyond fp16's range; the
    weights are decoded to bf16 to match), held in fp32 under the interpreter (``EMULATE``:
    see ``tiles.py``); fp16 and fp32 go to fp16."""
    if x.dtype == tl.bfloat16:
        if EMULATE:
            return x.to(tl.float32)
        else:
            return x
    else:
        return x.to(tl.float16)


@triton.jit
def _load_gemv_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m, offs_n, mask_n, M, k0, k_end, stride_xm,
                    stride_qweight, stride_qzeros, stride_scales, GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr, EMULATE: tl.constexpr):
    """What a GEMV-layout ``tl.dot`` tile at column ``k0`` reads, all zero from ``k_end`` on: the
    words ``[offs_n, k0 / 8 ...]``, the zeros (int32) and scales of their group (1-D: their
    ``[:, None]`` takes the words' register layout) and ``x^T [BLOCK_K, BLOCK_M]`` with its rows
    in ``dequant_gemv_words``' column order, as ``_dot_operand``. The tile lies in K (``BLOCK_K``
    divides the group size)."""
    q = _load_gemv_words(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight, BLOCK_K, EVEN_K)
    # "is the tile before k_end" as tensors (the interpreter refuses scalar masks): one value per tile
    live_n = mask_n & (offs_n * 0 + k0 < k_end)
    z, s = gemv_group_zero_scale(qzeros_ptr, scales_ptr, offs_n, live_n, k0, stride_qzeros, stride_scales, GROUP_SIZE)
    p = tl.arange(0, BLOCK_K)
    offs_k = k0 + (p // 8) * 8 + nibble_of_output(p)
    live_k = p * 0 + k0 < k_end
    x_t = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
                  mask=(offs_m[None, :] < M) & live_k[:, None], other=0.0)
    return q, z, s, _dot_operand(x_t, EMULATE)


@triton.jit
def _load_gemm_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m, offs_pn, mask_pn, offs_n, M, N, k0, k_end,
                    stride_xm, stride_qweight, stride_qzeros, stride_scales, GROUP_SIZE: tl.constexpr,
                    BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, EMULATE: tl.constexpr):
    """What a GEMM-layout ``tl.dot`` tile at row ``k0`` reads, all zero from ``k_end`` on: the words
    ``[k0 ..., offs_pn]``, the zero words and scales of their group and ``x [BLOCK_M, BLOCK_K]``.
    The tile lies in K (``BLOCK_K`` divides the group size); ``EVEN_N``: and in N."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    # "is the tile before k_end" as tensors (the interpreter refuses scalar masks): one value per tile
    live_k = offs_k * 0 + k0 < k_end
    live_pn = offs_pn * 0 + k0 < k_end
    live_n = offs_n * 0 + k0 < k_end
    if not EVEN_N:  # with EVEN_N no column masks: the loads stay 16 bytes wide
        live_pn = live_pn & mask_pn
        live_n = live_n & (offs_n < N)
    q = tl.load(qweight_ptr + offs_k[:, None] * stride_qweight + offs_pn[None, :],
                mask=live_k[:, None] & live_pn[None, :], other=0, eviction_policy="evict_first")
    group = k0 // GROUP_SIZE
    zw = tl.load(qzeros_ptr + group * stride_qzeros + offs_pn, mask=live_pn, other=0)
    s = tl.load(scales_ptr + group * stride_scales + offs_n, mask=live_n, other=0.0)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                mask=(offs_m[:, None] < M) & live_k[None, :], other=0.0)
    return q, zw, s, _dot_operand(x, EMULATE)


@triton.jit
def _load_x8(ptrs, limit, EVEN_K: tl.constexpr):
    """``ptrs[c]`` for c = 0..7 as fp32 (zero where ``c >= limit`` unless ``EVEN_K``)."""
    if EVEN_K:
        return (tl.load(ptrs).to(tl.float32), tl.load(ptrs + 1).to(tl.float32),
                tl.load(ptrs + 2).to(tl.float32), tl.load(ptrs + 3).to(tl.float32),
                tl.load(ptrs + 4).to(tl.float32), tl.load(ptrs + 5).to(tl.float32),
                tl.load(ptrs + 6).to(tl.float32), tl.load(ptrs + 7).to(tl.float32))
    else:
        return (tl.load(ptrs, mask=limit > 0, other=0.0).to(tl.float32),
                tl.load(ptrs + 1, mask=limit > 1, other=0.0).to(tl.float32),
                tl.load(ptrs + 2, mask=limit > 2, other=0.0).to(tl.float32),
                tl.load(ptrs + 3, mask=limit > 3, other=0.0).to(tl.float32),
                tl.load(ptrs + 4, mask=limit > 4, other=0.0).to(tl.float32),
                tl.load(ptrs + 5, mask=limit > 5, other=0.0).to(tl.float32),
                tl.load(ptrs + 6, mask=limit > 6, other=0.0).to(tl.float32),
                tl.load(ptrs + 7, mask=limit > 7, other=0.0).to(tl.float32))


@triton.jit
def _sum8(x0, x1, x2, x3, x4, x5, x6, x7):
    return ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))


@triton.jit
def _accumulate_words(acc2, acc_z, t, x_sum, s16, zs, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """Add one token's ``sum_c (q - z) s x`` per word: ``16s t`` per word (``t`` from
    ``dot8_one_plus_q16``) plus the zero term ``-(16 + z)s sum(x)``, once per row and tile when the
    tile lies in one group, else per word. ``x_sum``: the sum of each word's 8 x values."""
    acc2 += s16 * t
    if BLOCK_K <= GROUP_SIZE:
        acc_z += zs * tl.sum(x_sum, axis=0)
    else:
        acc2 += zs * x_sum[None, :]
    return acc2, acc_z


@triton.jit
def _token_x_pairs(x_row, offs_pj, K, EVEN_K: tl.constexpr, USE_PTX: tl.constexpr):
    """One token's x at the pairs of words ``offs_pj`` (``x_pairs``): the four pairs of each even
    word, then of each odd word, each ``[1, BLOCK_K / 16]`` (a row that broadcasts over the tile)."""
    e0, e1, e2, e3 = x_pairs(x_row, 2 * offs_pj, K, EVEN_K, USE_PTX)
    o0, o1, o2, o3 = x_pairs(x_row, 2 * offs_pj + 1, K, EVEN_K, USE_PTX)
    return (e0[None, :], e1[None, :], e2[None, :], e3[None, :],
            o0[None, :], o1[None, :], o2[None, :], o3[None, :])


# --- GEMM layout: qweight [K, N/8] -------------------------------------------------------------


@triton.jit
def awq_gemm_layout_kernel(
    # pointers
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, bias_ptr, out_ptr, workspace_ptr, tickets_ptr,
    # sizes
    M, N, K, k_iters_per_split, split_k,
    # strides (the last dimension of every tensor is contiguous)
    stride_xm, stride_qweight, stride_qzeros, stride_scales, stride_om,
    # meta-parameters
    GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PTX: tl.constexpr,
    PREFETCH: tl.constexpr, W_FIRST: tl.constexpr, EVEN_N: tl.constexpr, PDL: tl.constexpr,
    EMULATE: tl.constexpr,
):
    FMA: tl.constexpr = BLOCK_M == 1
    DOT_BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16  # tl.dot in bf16 (_dot_operand)
    _wait_for_previous_kernel(PDL)
    # grid (m, n, k): neighbours in launch order take neighbouring column blocks, i.e. the
    # neighbouring bytes of each packed row [k, :]
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = pid_k * k_iters_per_split * BLOCK_K
    k_end = tl.minimum(k_start + k_iters_per_split * BLOCK_K, K)

    offs_pn = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)  # packed columns
    mask_pn = offs_pn < N // 8
    if FMA:  # words [BLOCK_K, BLOCK_N / 8] with their 8 nibbles on a third axis; no reshape
        nib = tl.arange(0, 8)  # nibble i of a word holds column 8j + ORDER[i]
        order = 2 * (nib % 4) + nib // 4  # ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
        cols = 8 * offs_pn[:, None] + order[None, :]  # [BLOCK_N / 8, 8]
        acc3 = tl.zeros((BLOCK_K, BLOCK_N // 8, 8), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M) if W_FIRST else (BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PREFETCH:
            q_next, zw_next, s_next, x_next = _load_gemm_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m, offs_pn,
                                                              mask_pn, offs_n, M, N, k_start, k_end, stride_xm,
                                                              stride_qweight, stride_qzeros, stride_scales,
                                                              GROUP_SIZE, BLOCK_K, EVEN_N, EMULATE)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if FMA:
            q = tl.load(qweight_ptr + offs_k[:, None] * stride_qweight + offs_pn[None, :],
                        mask=(offs_k[:, None] < K) & mask_pn[None, :], other=0)
            group = k0 // GROUP_SIZE
            zw = tl.load(qzeros_ptr + group * stride_qzeros + offs_pn, mask=mask_pn, other=0)
            s = tl.load(scales_ptr + group * stride_scales + cols, mask=cols < N, other=0.0).to(tl.float32)
            z = ((zw[:, None] >> (4 * nib)[None, :]) & 0xF).to(tl.float32)
            s16, zs = fold_zero_into_scale(s, z)  # [BLOCK_N / 8, 8]
            x = tl.load(x_ptr + pid_m * stride_xm + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            acc3 = nibble_fma(q[:, :, None], (19 - 4 * nib)[None, None, :], s16[None, :, :], zs[None, :, :],
                              x[:, None, None], acc3, USE_PTX)
        else:  # the words decoded in fp16x2 pairs (columns in order), then zero and scale per column
            if PREFETCH:  # this tile was loaded one iteration ago; load the next one
                q, zw, s, x = q_next, zw_next, s_next, x_next
                q_next, zw_next, s_next, x_next = _load_gemm_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m,
                                                                  offs_pn, mask_pn, offs_n, M, N, k0 + BLOCK_K, k_end,
                                                                  stride_xm, stride_qweight, stride_qzeros,
                                                                  stride_scales, GROUP_SIZE, BLOCK_K, EVEN_N, EMULATE)
            else:
                q, zw, s, x = _load_gemm_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m, offs_pn, mask_pn,
                                              offs_n, M, N, k0, k_end, stride_xm, stride_qweight, stride_qzeros,
                                              stride_scales, GROUP_SIZE, BLOCK_K, EVEN_N, EMULATE)
            w = dequant_gemm_words(q, zw, s, BLOCK_K, BLOCK_N, DOT_BF16, USE_PTX, EMULATE)
            if W_FIRST:  # out^T = W^T @ x^T: the weight tile is the dot's 64+-row left operand
                acc = tl.dot(tl.trans(w), tl.trans(x), acc)
            else:
                acc = tl.dot(x, w, acc)
    if FMA:
        _emit_columns(tl.sum(acc3, axis=0)[None, :, :], cols[None, :, :], offs_m[:, None, None], M, N,
                      out_ptr, workspace_ptr, bias_ptr, stride_om, HAS_BIAS, USE_SPLIT_K)
    else:
        if W_FIRST:
            acc = tl.trans(acc)
        _emit_columns(acc, offs_n[None, :], offs_m[:, None], M, N, out_ptr, workspace_ptr, bias_ptr, stride_om,
                      HAS_BIAS, USE_SPLIT_K)
    if USE_SPLIT_K:
        _finish_split_k(offs_m, offs_n, M, N, out_ptr, workspace_ptr, tickets_ptr, _output_tile(False),
                        bias_ptr, stride_om, split_k, HAS_BIAS, BLOCK_M, BLOCK_N)


# --- GEMV layout: qweight [N, K/8] -------------------------------------------------------------


@triton.jit
def awq_gemv_layout_kernel(
    # pointers
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, bias_ptr, out_ptr, workspace_ptr, tickets_ptr,
    # sizes
    M, N, K, k_iters_per_split, split_k,
    # strides (the last dimension of every tensor is contiguous)
    stride_xm, stride_qweight, stride_qzeros, stride_scales, stride_om,
    # meta-parameters
    GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, USE_SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_FIRST: tl.constexpr,
    EVEN_K: tl.constexpr, USE_PTX: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr,
    INTERLEAVE_K: tl.constexpr, SILU_MUL: tl.constexpr, EMULATE: tl.constexpr, X_PAIRS: tl.constexpr,
    TOKENS: tl.constexpr,
):
    FMA: tl.constexpr = BLOCK_M < 16
    DOT_BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16  # tl.dot in bf16 (_dot_operand)
    # X_PAIRS (the launcher's choice; BLOCK_M 1, 2 or 4, fp16 or bf16 x, 8-byte aligned words and x):
    # words and x read as int64, pair arithmetic. One fp16 token: dot16_f16x2; else the words
    # decoded once (decode16_pairs) and dotted with each token (dot16_pairs). TOKENS: how many of
    # a pair tile's BLOCK_M tokens are dotted, min(M, BLOCK_M): a token past M would only be
    # masked off at the store.
    X_F16: tl.constexpr = X_PAIRS and BLOCK_M == 1 and x_ptr.dtype.element_ty == tl.float16
    X_BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    WORDS_FIRST: tl.constexpr = FMA and PREFETCH  # the first tile's words are read before waiting
    if not WORDS_FIRST:
        _wait_for_previous_kernel(PDL)
    if INTERLEAVE_K:  # grid (k, m, n), the splits of a row block side by side in launch order;
        pid_k = tl.program_id(0)  # split s takes the K tiles s, s + split_k, s + 2 split_k, ...
        pid_m = tl.program_id(1)
        pid_n = tl.program_id(2)
        k_start = pid_k * BLOCK_K
        k_step = split_k * BLOCK_K
        k_end = K
    else:  # grid (m, n, k); split s takes one stretch of K
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        k_start = pid_k * k_iters_per_split * BLOCK_K
        k_step = BLOCK_K
        k_end = tl.minimum(k_start + k_iters_per_split * BLOCK_K, K)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    tile = _output_tile(INTERLEAVE_K)  # here, not after the loop: see _output_tile

    if FMA:  # per token m, row n and packed column j: sum over the 8 nibbles, then the group
        if X_PAIRS:  # one [BLOCK_N, BLOCK_K / 16] accumulator per token: a column per pair of words
            acc2 = tl.zeros((BLOCK_N, BLOCK_K // 16), dtype=tl.float32)
            if TOKENS >= 2:
                acc2b = tl.zeros((BLOCK_N, BLOCK_K // 16), dtype=tl.float32)
            if TOKENS >= 3:
                acc2c = tl.zeros((BLOCK_N, BLOCK_K // 16), dtype=tl.float32)
            if TOKENS == 4:
                acc2d = tl.zeros((BLOCK_N, BLOCK_K // 16), dtype=tl.float32)
        elif BLOCK_M <= 2:  # one [BLOCK_N, BLOCK_K / 8] accumulator per token
            acc2 = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
            acc_z = tl.zeros((BLOCK_N, 1), dtype=tl.float32)
            if BLOCK_M == 2:
                acc2b = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
                acc_zb = tl.zeros((BLOCK_N, 1), dtype=tl.float32)
        else:
            acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
        if PREFETCH:
            q_next = _load_fma_words(qweight_ptr, offs_n, mask_n, k_start, k_end, stride_qweight,
                                     BLOCK_K, EVEN_K, X_PAIRS)
            _wait_for_previous_kernel(PDL)  # while those words are on their way
    else:
        if W_FIRST:
            acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PREFETCH:
            q_next, z_next, s_next, x_next = _load_gemv_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m, offs_n,
                                                             mask_n, M, k_start, k_end, stride_xm, stride_qweight,
                                                             stride_qzeros, stride_scales, GROUP_SIZE, BLOCK_K, EVEN_K, EMULATE)
    for k0 in range(k_start, k_end, k_step):
        if FMA:  # word by word in the words' register layout: no reshape
            offs_pk = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # packed (word) columns
            # One fp16 token: words decoded and dotted in fp16x2 pairs, two words at a time. The zeros,
            # scales and x are read before the words: Triton then gives the tile the words' 16-byte
            # load layout (read after them, the layout of the per-row zeros won and each thread held a
            # whole row: x's pairs made for every row, +40% instructions; docs/data/sass-per-weight.md).
            if X_PAIRS:
                low, high, scale = gemv_group_zero_pairs(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros,
                                                         stride_scales, GROUP_SIZE, BLOCK_K, X_BF16)
                offs_pj = k0 // 16 + tl.arange(0, BLOCK_K // 16)  # pairs of words
                xa = x_ptr + pid_m * BLOCK_M * stride_xm
                e0, e1, e2, e3, o0, o1, o2, o3 = _token_x_pairs(xa, offs_pj, K, EVEN_K, USE_PTX)
                # past M, token a again (valid memory; its row is not stored)
                if TOKENS >= 2:
                    xb = xa + tl.where(pid_m * BLOCK_M + 1 < M, stride_xm, 0)
                    f0, f1, f2, f3, g0, g1, g2, g3 = _token_x_pairs(xb, offs_pj, K, EVEN_K, USE_PTX)
                if TOKENS >= 3:
                    xc = xa + tl.where(pid_m * BLOCK_M + 2 < M, 2 * stride_xm, 0)
                    h0, h1, h2, h3, i0, i1, i2, i3 = _token_x_pairs(xc, offs_pj, K, EVEN_K, USE_PTX)
                if TOKENS == 4:
                    xd = xa + tl.where(pid_m * BLOCK_M + 3 < M, 3 * stride_xm, 0)
                    j0, j1, j2, j3, l0, l1, l2, l3 = _token_x_pairs(xd, offs_pj, K, EVEN_K, USE_PTX)
            if PREFETCH:  # this tile's words were loaded one iteration ago; load the next tile's
                q = q_next
                q_next = _load_fma_words(qweight_ptr, offs_n, mask_n, k0 + k_step, k_end, stride_qweight,
                                         BLOCK_K, EVEN_K, X_PAIRS)
            else:
                q = _load_fma_words(qweight_ptr, offs_n, mask_n, k0, k_end, stride_qweight, BLOCK_K, EVEN_K, X_PAIRS)
            if X_F16:
                acc2 += scale * dot16_f16x2(q, e0, e1, e2, e3, o0, o1, o2, o3, low, high, USE_PTX)
            elif X_PAIRS:  # each word decoded once, its pairs dotted with each token's
                p0, p1, p2, p3, p4, p5, p6, p7 = decode16_pairs(q, low, high, X_BF16, USE_PTX)
                acc2 += scale * dot16_pairs(p0, p1, p2, p3, p4, p5, p6, p7, e0, e1, e2, e3, o0, o1, o2, o3,
                                            X_BF16, USE_PTX)
                if TOKENS >= 2:
                    acc2b += scale * dot16_pairs(p0, p1, p2, p3, p4, p5, p6, p7, f0, f1, f2, f3, g0, g1, g2, g3,
                                                 X_BF16, USE_PTX)
                if TOKENS >= 3:
                    acc2c += scale * dot16_pairs(p0, p1, p2, p3, p4, p5, p6, p7, h0, h1, h2, h3, i0, i1, i2, i3,
                                                 X_BF16, USE_PTX)
                if TOKENS == 4:
                    acc2d += scale * dot16_pairs(p0, p1, p2, p3, p4, p5, p6, p7, j0, j1, j2, j3, l0, l1, l2, l3,
                                                 X_BF16, USE_PTX)
            else:
                s16, zs = gemv_group_scales_f32(qzeros_ptr, scales_ptr, offs_n, mask_n, k0,
                                                stride_qzeros, stride_scales, GROUP_SIZE, BLOCK_K)
                if BLOCK_M == 1:  # x[8j + c] for c = 0..7: eight loads at stride 8
                    xs = x_ptr + pid_m * stride_xm + offs_pk * 8
                    x0, x1, x2, x3, x4, x5, x6, x7 = _load_x8(xs, K - offs_pk * 8, EVEN_K)
                    t = dot8_one_plus_q16(q, x0[None, :], x1[None, :], x2[None, :], x3[None, :],
                                          x4[None, :], x5[None, :], x6[None, :], x7[None, :], USE_PTX)
                    acc2, acc_z = _accumulate_words(acc2, acc_z, t, _sum8(x0, x1, x2, x3, x4, x5, x6, x7), s16, zs,
                                                    BLOCK_K, GROUP_SIZE)
                elif BLOCK_M == 2:  # two tokens: each word decoded once for both
                    xs = x_ptr + pid_m * 2 * stride_xm + offs_pk * 8
                    a0, a1, a2, a3, a4, a5, a6, a7 = _load_x8(xs, K - offs_pk * 8, EVEN_K)
                    # without a second token (M odd), token a again: valid memory, the row is not stored
                    xs_b = xs + tl.where(pid_m * 2 + 1 < M, stride_xm, 0)
                    b0, b1, b2, b3, b4, b5, b6, b7 = _load_x8(xs_b, K - offs_pk * 8, EVEN_K)
                    ta, tb = dot8x2_one_plus_q16(q, a0[None, :], a1[None, :], a2[None, :], a3[None, :], a4[None, :],
                                                 a5[None, :], a6[None, :], a7[None, :], b0[None, :], b1[None, :],
                                                 b2[None, :], b3[None, :], b4[None, :], b5[None, :], b6[None, :],
                                                 b7[None, :], USE_PTX)
                    acc2, acc_z = _accumulate_words(acc2, acc_z, ta, _sum8(a0, a1, a2, a3, a4, a5, a6, a7), s16, zs,
                                                    BLOCK_K, GROUP_SIZE)
                    acc2b, acc_zb = _accumulate_words(acc2b, acc_zb, tb, _sum8(b0, b1, b2, b3, b4, b5, b6, b7), s16, zs,
                                                      BLOCK_K, GROUP_SIZE)
                else:  # the same with a token axis in front
                    t3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
                    x_sum2 = tl.zeros((BLOCK_M, BLOCK_K // 8), dtype=tl.float32)
                    for c in tl.static_range(8):
                        f = nibble_as_f32_one_plus_q16(q, c)
                        offs_k = offs_pk * 8 + c
                        x2 = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                                     mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0).to(tl.float32)
                        t3 += f[None, :, :] * x2[:, None, :]
                        x_sum2 += x2
                    acc3 += s16[None, :, :] * t3 + zs[None, :, :] * x_sum2[:, None, :]
        else:  # whole tile for tl.dot, the weight tile decoded in fp16x2 pairs (x's K order permuted to match)
            if PREFETCH:  # this tile was loaded one iteration ago; load the next one
                q, z, s, x_t = q_next, z_next, s_next, x_next
                q_next, z_next, s_next, x_next = _load_gemv_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m,
                                                                 offs_n, mask_n, M, k0 + k_step, k_end, stride_xm,
                                                                 stride_qweight, stride_qzeros, stride_scales,
                                                                 GROUP_SIZE, BLOCK_K, EVEN_K, EMULATE)
            else:
                q, z, s, x_t = _load_gemv_tile(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, offs_m, offs_n, mask_n, M,
                                               k0, k_end, stride_xm, stride_qweight, stride_qzeros, stride_scales,
                                               GROUP_SIZE, BLOCK_K, EVEN_K, EMULATE)
            w = dequant_gemv_words(q, z[:, None], s[:, None], BLOCK_N, BLOCK_K, DOT_BF16, USE_PTX, EMULATE)
            if W_FIRST:  # out^T = W @ x^T: the weight tile is the dot's 64+-row left operand
                acc_t = tl.dot(w, x_t, acc_t)
            else:
                acc = tl.dot(tl.trans(x_t), tl.trans(w), acc)
    if X_PAIRS and BLOCK_M >= 2:  # rows past TOKENS lie past M (masked at the store): a's sums stand in
        sum_a = tl.sum(acc2, axis=1)
        sum_b = sum_a
        if TOKENS >= 2:
            sum_b = tl.sum(acc2b, axis=1)
        if BLOCK_M == 4:  # [4, BLOCK_N]: tokens a, b, c, d (join's new axis is the last)
            sum_c = sum_a
            if TOKENS >= 3:
                sum_c = tl.sum(acc2c, axis=1)
            sum_d = sum_a
            if TOKENS == 4:
                sum_d = tl.sum(acc2d, axis=1)
            acc = tl.trans(tl.reshape(tl.join(tl.join(sum_a, sum_c), tl.join(sum_b, sum_d)), (BLOCK_N, 4)))
        else:  # [2, BLOCK_N]: token a, token b
            acc = tl.trans(tl.join(sum_a, sum_b))
    elif X_PAIRS:
        acc = tl.sum(acc2, axis=1)[None, :]
    elif FMA and BLOCK_M == 1:
        acc = (tl.sum(acc2, axis=1) + tl.sum(acc_z, axis=1))[None, :]
    elif FMA and BLOCK_M == 2:  # [2, BLOCK_N]: token a, token b
        acc = tl.trans(tl.join(tl.sum(acc2, axis=1) + tl.sum(acc_z, axis=1),
                               tl.sum(acc2b, axis=1) + tl.sum(acc_zb, axis=1)))
    elif FMA:
        acc = tl.sum(acc3, axis=2)
    elif W_FIRST:
        acc = tl.trans(acc_t)
    _emit_columns(acc, offs_n[None, :], offs_m[:, None], M, N, out_ptr, workspace_ptr, bias_ptr, stride_om,
                  HAS_BIAS, USE_SPLIT_K, SILU_MUL, BLOCK_M, BLOCK_N)
    if USE_SPLIT_K:
        _finish_split_k(offs_m, offs_n, M, N, out_ptr, workspace_ptr, tickets_ptr, tile,
                        bias_ptr, stride_om, split_k, HAS_BIAS, BLOCK_M, BLOCK_N, SILU_MUL)


# --- launcher ----------------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # not triton.cdiv: on the host that goes through a JIT wrapper (~4 us)


@functools.lru_cache(maxsize=4096)
def split_k_iters(k_tiles: int, split_k: int) -> tuple[int, int]:
    """K tiles per split and the number of splits that ``split_k`` asks for, with no empty split."""
    k_iters = _cdiv(k_tiles, split_k)
    return k_iters, _cdiv(k_tiles, k_iters)


def _geometry(cfg: MatmulConfig, gemv_layout: bool, group_size: int, M: int, N: int, K: int
              ) -> tuple[tuple[int, int, int], int, int]:
    """The grid (``(k, m, n)`` with ``interleave_k``, else ``(m, n, k)``), the K iterations per
    split and the number of splits; checks the config (a failure is not cached)."""
    cfg.check(gemv_layout, group_size)
    k_iters, split_k = split_k_iters(_cdiv(K, cfg.block_k), cfg.split_k)
    m_blocks, n_blocks = _cdiv(M, cfg.block_m), _cdiv(N, cfg.block_n)
    grid = (split_k, m_blocks, n_blocks) if cfg.interleave_k else (m_blocks, n_blocks, split_k)
    if max(grid[1:]) > 65535:  # CUDA's limit on a grid's 2nd and 3rd dimensions
        raise ValueError(f"{cfg}: {m_blocks} x {n_blocks} output tiles; use larger tiles or the dequant path")
    return grid, k_iters, split_k

_WORKSPACES: dict[tuple[torch.device, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
_OUTGROWN: list[tuple[torch.Tensor, torch.Tensor]] = []  # kept: captured graphs may still use them


def _workspace(device: torch.device, stream: int, rows: int, n: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An fp32 ``[rows, N]`` buffer and ``tiles`` tickets, all zero between launches.

    Shared by every layer of the same width whose launches go to the same stream: launches on
    one stream are ordered, so sharing is safe there. Each stream has its own, so that a model
    run on two streams at once (two requests served concurrently) never mixes partial sums; a
    CUDA graph captures the one of its capture stream and keeps it (it is never freed, only
    outgrown by a larger one for new launches). Allocated by ``scratch.persistent_zeros``.
    """
    key = (device, stream, rows, n)
    found = _WORKSPACES.get(key)
    if found is None or found[1].numel() < tiles:
        if found is not None:
            _OUTGROWN.append(found)
        workspace, tickets = persistent_zeros(device, ((rows * n, torch.float32), (max(tiles, 1), torch.int32)))
        found = (workspace.view(rows, n), tickets)
        _WORKSPACES[key] = found
    return found


Replay = Callable[[torch.Tensor], torch.Tensor]

#: Launch the fused kernels with programmatic dependent launch where the GPU has it (sm90+):
#: a kernel is scheduled while the one before it finishes and reads its first weights before
#: waiting for it. It pays only where the kernels around ours take part too: on the H100 it
#: took 1-7% off back-to-back M = 1 calls of one layer shape, 1.8% *onto* a compiled decode
#: step whose inductor kernels do not use PDL, and 4% off one whose kernels do
#: (H100, 2026-11-25). So it is on for every launch with
#: ``AWQ_KERNEL_SELECT_PDL=1`` (benchmarks flip this flag), and under ``torch.compile`` it
#: follows inductor's own setting (``TORCHINDUCTOR_ENABLE_PDL=1``: ``kernels/op.py``).
USE_PDL = os.environ.get("AWQ_KERNEL_SELECT_PDL", "0") == "1"


def awq_matmul_with_replay(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
            bias: torch.Tensor | None, gemv_layout: bool, in_features: int, out_features: int,
            group_size: int, config: MatmulConfig, out_dtype: torch.dtype | None, pdl: bool = False,
            silu_mul: bool = False, out_shape: tuple[int, ...] | None = None
            ) -> tuple[torch.Tensor, Replay | None]:
    """``x [M, K] @ W^T (+ bias) -> [M, N]`` for one packed layer with an explicit config, and a
    function that repeats the launch for another contiguous, 16-byte aligned input of the same
    dtype and number of elements (of any shape: it reads only the address) and returns the
    output in ``out_shape`` (default ``[M, N]``), straight through Triton's launcher (None where
    that is off). A caller that keeps it per input shape then needs no ``view`` on either side
    (two views cost ~2.4 us of host time per call, half of a kept launch's Python).
    ``pdl`` launches with programmatic dependent launch (the caller has checked that the GPU
    has it, sm90+: ``DispatchPlan.pdl_capable``; ignored where Triton lacks the instructions).
    ``silu_mul`` (GEMV layout): the layer's rows are gate and up rows in turn, and the output
    is ``silu(gate) * up``, ``[M, N / 2]``, made in the kernel's epilogue.

    The function launches with the raw addresses of the layer's buffers: its caller keeps those
    tensors alive (the module holds them; the operator checks them by weak reference). It keeps
    alive only the split-K scratch it writes."""
    M, K = x.shape
    N = out_features
    if K != in_features:
        raise ValueError(f"x has {K} features, the layer expects {in_features}")
    if silu_mul and not gemv_layout:
        raise ValueError("the SiLU x up epilogue is in the GEMV layout's kernel only")
    cfg = config
    grid, k_iters, split_k = _geometry(cfg, gemv_layout, group_size, M, N, K)
    if x.stride(-1) != 1:
        x = x.contiguous()
    words_in_pairs = K % 16 == 0 and qweight.data_ptr() % 8 == 0 and qweight.stride(0) % 2 == 0
    if gemv_layout and cfg.block_m == 1 and x.dtype == torch.float16 and not words_in_pairs:
        raise ValueError(f"the one-token fp16 path reads qweight as int64: it needs K % 16 == 0 and 8-byte "
                         f"aligned rows (K = {K}, row stride {qweight.stride(0)} words)")
    # the pair paths (x and W read as int64 words): one, two or four fp16 or bf16 tokens per program
    pairs = cfg.takes_pairs(gemv_layout) and words_in_pairs and x.dtype in (torch.float16, torch.bfloat16)
    if pairs and (x.data_ptr() % 8 or x.stride(0) % 4):
        x = x.clone(memory_format=torch.contiguous_format)
    dtype = out_dtype or x.dtype
    width = N // 2 if silu_mul else N
    out = torch.empty(M, width, dtype=dtype, device=x.device)
    stream = current_stream(x.device)
    rows, tiles = max(M, 16), grid[0] * grid[1] * grid[2] // split_k
    if split_k > 1:
        workspace, tickets = _workspace(x.device, stream, rows, N, tiles)
    else:
        workspace, tickets = out, out  # unused
    sizes = (M, N, K, k_iters, split_k,
             x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0))
    args = (x, qweight, qzeros, scales, bias if bias is not None else out, out, workspace, tickets, *sizes)
    meta = dict(GROUP_SIZE=group_size, HAS_BIAS=bias is not None, USE_SPLIT_K=split_k > 1,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    emulate = interpreting()  # bf16 carried in fp32 there: the interpreter's bf16 is not numeric
    use_ptx = x.is_cuda and torch.version.hip is None and not emulate  # NVIDIA only
    meta["USE_PTX"] = use_ptx
    if gemv_layout:
        meta.update(W_FIRST=cfg.w_first, EVEN_K=K % cfg.block_k == 0, PREFETCH=cfg.prefetch)
    else:
        meta.update(PREFETCH=cfg.prefetch, W_FIRST=cfg.w_first, EVEN_N=N % cfg.block_n == 0)
    meta["PDL"] = pdl = use_ptx and pdl and TRITON_HAS_PDL
    if gemv_layout:
        meta.update(INTERLEAVE_K=cfg.interleave_k, SILU_MUL=silu_mul)
    meta["EMULATE"] = emulate
    if gemv_layout:
        meta["X_PAIRS"] = pairs
        meta["TOKENS"] = min(M, cfg.block_m) if pairs else cfg.block_m
    kernel = awq_gemv_layout_kernel if gemv_layout else awq_gemm_layout_kernel
    direct = launch(kernel, grid, args, meta, cfg.num_warps, cfg.num_stages, launch_pdl=pdl)
    if direct is None or x.stride(0) != K or x.data_ptr() % 16:
        return out, None
    scratch = (workspace, tickets) if split_k > 1 else None
    return out, kept_launch(direct, grid, stream, (qweight, qzeros, scales), bias, out, scratch, (rows, N, tiles),
                            (*sizes, *meta.values()), out_shape if out_shape is not None else (M, width))


def kept_launch(direct: Launcher, grid: tuple[int, int, int], stream: int,
                layer: tuple[torch.Tensor, torch.Tensor, torch.Tensor], bias: torch.Tensor | None, out: torch.Tensor,
                scratch: tuple[torch.Tensor, torch.Tensor] | None, scratch_size: tuple[int, int, int],
                tail: tuple[object, ...], shape: tuple[int, ...]) -> Replay:
    """The launch that ``direct`` just made, as a function ``x -> out`` for a new contiguous,
    16-byte aligned input of the same dtype and number of elements, with almost no Python: the
    kernel takes ``x, qweight, qzeros, scales, bias, out, workspace, tickets``, then ``tail``
    (sizes, strides, constexprs). The output is new, in ``shape``. The layer's buffers go by raw
    address (its caller keeps them alive). Split-K ``scratch`` (workspace, tickets) is the
    launch's own on ``stream``; on another stream that stream's own ``_workspace(rows, n, tiles)``
    (``scratch_size``)."""
    fixed = tuple(t.data_ptr() for t in layer)
    bias_ptr = None if bias is None else bias.data_ptr()
    spare = None if scratch is None else (scratch[0].data_ptr(), scratch[1].data_ptr())
    rows, n, tiles = scratch_size
    dtype, device = out.dtype, out.device
    index = device.index if device.index is not None else torch.cuda.current_device()

    def replay(x_new: torch.Tensor) -> torch.Tensor:
        out_new = torch.empty(shape, dtype=dtype, device=device)
        o = out_new.data_ptr()
        now = torch._C._cuda_getCurrentRawStream(index)
        if spare is None:
            ws, tk = o, o
        elif now == stream:
            ws, tk = spare
        else:  # another stream: its own split-K scratch (kept alive by _WORKSPACES)
            ws, tk = (t.data_ptr() for t in _workspace(device, now, rows, n, tiles))
        direct(grid, now, (x_new.data_ptr(), *fixed, o if bias_ptr is None else bias_ptr, o, ws, tk, *tail))
        return out_new

    replay.keep_alive = scratch or ()  # type: ignore[attr-defined]
    return replay
