"""The fused int4 matmul: ``out = x @ W^T + bias`` with ``W`` dequantized in registers.

History that shaped it (H100 sweeps, docs/kernels.md): whole-tile dequantization beat
per-nibble accumulators on the GEMM layout (12.6 vs 18.0 us at 4096x4096, M=1); per-nibble FMA
is kept for the GEMV layout at M=1, where it is the fastest of our paths.

One kernel per packed layout; each serves both regimes, chosen by its meta-parameters:

* **GEMV regime** (decode, M = 1..16): memory-bound. ``split_k`` programs share each block of
  output columns so that every SM streams weights even when N is small; M = 1 uses plain FMAs
  (``BLOCK_M == 1``), larger M a ``tl.dot``. Partial sums meet in an fp32 workspace through
  atomics, and the last program of a tile (counted with an atomic ticket) writes the output
  and puts the workspace and its ticket back to zero: one launch, no memset.
* **GEMM regime** (prefill, batched serving): ``tl.dot`` tiles, no split-K. The M tiles of one
  column block are neighbours in the launch order, so a weight tile is read from DRAM once.

Grid: ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), split_k)``. See ``tiles.py`` for the nibble
arithmetic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .tiles import dequant_gemm_layout_tile, dequant_gemv_layout_tile, dequant_gemv_nibble, gemv_group_params


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2

    def __str__(self) -> str:
        return (f"BM{self.block_m}/BN{self.block_n}/BK{self.block_k}/S{self.split_k}"
                f"/w{self.num_warps}/s{self.num_stages}")

    def check(self, gemv_layout: bool, group_size: int) -> None:
        """Raise ``ValueError`` if the kernel cannot run this tile shape."""
        bm, bn, bk = self.block_m, self.block_n, self.block_k
        if bk % 8 or bn % 8:
            raise ValueError(f"{self}: BLOCK_N and BLOCK_K must be multiples of 8")
        if gemv_layout and bm == 1:  # nibble-wise FMA: a tile may span several groups
            if bk > group_size and bk % group_size or bk < group_size and group_size % bk:
                raise ValueError(f"{self}: BLOCK_K and group_size={group_size} must divide one another")
        elif bk > group_size or group_size % bk:  # whole tiles lie inside one group
            raise ValueError(f"{self}: BLOCK_K must divide group_size={group_size}")
        if bm > 1 and (bn < 16 or bk < 16):
            raise ValueError(f"{self}: the tl.dot path needs BLOCK_N, BLOCK_K >= 16")
        if bm > 1 and bm < 16:
            raise ValueError(f"{self}: BLOCK_M is 1 (FMA) or >= 16 (tl.dot)")


# --- epilogue ----------------------------------------------------------------------------------


@triton.jit
def _emit_columns(acc, cols, offs_m, M, N, out_ptr, workspace_ptr, bias_ptr, stride_om,
                  HAS_BIAS: tl.constexpr, USE_SPLIT_K: tl.constexpr):
    """Store ``acc [BLOCK_M, len(cols)]`` to output columns ``cols``, or add it to the workspace."""
    mask = (offs_m[:, None] < M) & (cols[None, :] < N)
    if USE_SPLIT_K:
        tl.atomic_add(workspace_ptr + offs_m[:, None] * N + cols[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _finish_split_k(offs_m, offs_n, M, N, out_ptr, workspace_ptr, tickets_ptr, bias_ptr, stride_om,
                    split_k, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """After this program's partial sums are in: the last split of the tile writes the output."""
    tl.debug_barrier()  # every thread's partial sum is in before the ticket is taken
    ticket_ptr = tickets_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    if tl.atomic_add(ticket_ptr, 1) == split_k - 1:
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        partial_ptrs = workspace_ptr + offs_m[:, None] * N + offs_n[None, :]
        zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        total = tl.atomic_add(partial_ptrs, zero, mask=mask)  # a coherent read of the sums
        tl.store(partial_ptrs, zero, mask=mask)
        tl.atomic_xchg(ticket_ptr, 0)
        if HAS_BIAS:
            total += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                 total.to(out_ptr.dtype.element_ty), mask=mask)


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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    FMA: tl.constexpr = BLOCK_M == 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = pid_k * k_iters_per_split * BLOCK_K
    k_end = tl.minimum(k_start + k_iters_per_split * BLOCK_K, K)

    if FMA:  # reduce over K once, after the loop
        acc2 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = dequant_gemm_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_k, pid_n, k0, K, N,
                                     stride_qweight, stride_qzeros, stride_scales,
                                     GROUP_SIZE, BLOCK_K, BLOCK_N)
        if FMA:
            x = tl.load(x_ptr + pid_m * stride_xm + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            acc2 += w.to(tl.float32) * x[:, None]
        else:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0).to(tl.float16)
            acc = tl.dot(x, w, acc)
    if FMA:
        acc = tl.sum(acc2, axis=0)[None, :]
    _emit_columns(acc, offs_n, offs_m, M, N, out_ptr, workspace_ptr, bias_ptr, stride_om,
                  HAS_BIAS, USE_SPLIT_K)
    if USE_SPLIT_K:
        _finish_split_k(offs_m, offs_n, M, N, out_ptr, workspace_ptr, tickets_ptr, bias_ptr, stride_om,
                        split_k, HAS_BIAS, BLOCK_M, BLOCK_N)


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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    FMA: tl.constexpr = BLOCK_M == 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k_start = pid_k * k_iters_per_split * BLOCK_K
    k_end = tl.minimum(k_start + k_iters_per_split * BLOCK_K, K)

    if FMA:
        acc = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        if FMA:  # nibble by nibble: no reshape, x gathered at stride 8
            offs_pk = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # packed (word) columns
            q = tl.load(qweight_ptr + offs_n[:, None] * stride_qweight + offs_pk[None, :],
                        mask=mask_n[:, None] & (offs_pk[None, :] < K // 8), other=0)
            zeros, scales = gemv_group_params(qzeros_ptr, scales_ptr, offs_n, mask_n, k0,
                                              stride_qzeros, stride_scales, GROUP_SIZE, BLOCK_K)
            for c in tl.static_range(8):
                w = dequant_gemv_nibble(q, zeros, scales, c)  # W[n, 8j + c]
                offs_k = offs_pk * 8 + c
                x = tl.load(x_ptr + pid_m * stride_xm + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
                acc += w.to(tl.float32) * x[None, :]
        else:  # whole tile for tl.dot
            offs_k = k0 + tl.arange(0, BLOCK_K)
            w = dequant_gemv_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_n, k0, K, N,
                                         stride_qweight, stride_qzeros, stride_scales,
                                         GROUP_SIZE, BLOCK_K, BLOCK_N)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0).to(tl.float16)
            acc = tl.dot(x, tl.trans(w), acc)
    if FMA:
        acc = tl.sum(acc, axis=1)[None, :]
    _emit_columns(acc, offs_n, offs_m, M, N, out_ptr, workspace_ptr, bias_ptr, stride_om,
                  HAS_BIAS, USE_SPLIT_K)
    if USE_SPLIT_K:
        _finish_split_k(offs_m, offs_n, M, N, out_ptr, workspace_ptr, tickets_ptr, bias_ptr, stride_om,
                        split_k, HAS_BIAS, BLOCK_M, BLOCK_N)


# --- launcher ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _check_once(cfg: MatmulConfig, gemv_layout: bool, group_size: int) -> None:
    cfg.check(gemv_layout, group_size)  # raises, and then is not cached

_WORKSPACES: dict[tuple[torch.device, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, rows: int, n: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An fp32 ``[rows, N]`` buffer and ``tiles`` tickets, all zero between launches.

    Shared by every layer of the same width on a device; launches on one stream are ordered,
    so sharing is safe. (Two streams running split-K layers of one width at once are not.)
    """
    key = (device, rows, n)
    found = _WORKSPACES.get(key)
    if found is None or found[1].numel() < tiles:
        found = (torch.zeros(rows, n, dtype=torch.float32, device=device),
                 torch.zeros(max(tiles, 1), dtype=torch.int32, device=device))
        _WORKSPACES[key] = found
    return found


def awq_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    gemv_layout: bool,
    in_features: int,
    out_features: int,
    group_size: int,
    config: MatmulConfig,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x [M, K] @ W^T (+ bias) -> [M, N]`` for one packed layer, with an explicit config."""
    M, K = x.shape
    N = out_features
    if K != in_features:
        raise ValueError(f"x has {K} features, the layer expects {in_features}")
    cfg = config
    _check_once(cfg, gemv_layout, group_size)
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=out_dtype or x.dtype, device=x.device)
    grid_m, grid_n = triton.cdiv(M, cfg.block_m), triton.cdiv(N, cfg.block_n)
    k_iters = triton.cdiv(triton.cdiv(K, cfg.block_k), cfg.split_k)
    split_k = triton.cdiv(triton.cdiv(K, cfg.block_k), k_iters)  # no empty splits
    if split_k > 1:
        workspace, tickets = _workspace(x.device, max(M, 16), N, grid_m * grid_n)
    else:
        workspace, tickets = out, out  # unused
    kernel = awq_gemv_layout_kernel if gemv_layout else awq_gemm_layout_kernel
    kernel[(grid_m, grid_n, split_k)](
        x, qweight, qzeros, scales, bias if bias is not None else out, out, workspace, tickets,
        M, N, K, k_iters, split_k,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
        GROUP_SIZE=group_size, HAS_BIAS=bias is not None, USE_SPLIT_K=split_k > 1,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
