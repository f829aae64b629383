"""The fused int4 matmul: ``out = x @ W^T + bias`` with ``W`` dequantized in registers.

One kernel serves both regimes, chosen by its meta-parameters:

* **GEMV regime** (decode, M = 1..16): memory-bound. ``split_k`` programs share each block of
  output columns so that every SM streams weights even when N is small; M = 1 uses plain FMAs
  (``BLOCK_M == 1``), M = 2..16 a 16-row ``tl.dot``. Partial sums meet in an fp32 workspace
  through atomics, and the last program of a tile (counted with an atomic ticket) writes the
  output and puts the workspace and its ticket back to zero: one launch, no memset.
* **GEMM regime** (prefill, batched serving): ``tl.dot`` tiles of ``BLOCK_M x BLOCK_N``,
  no split-K. The M tiles of one column block are neighbours in the launch order, so a
  weight tile is read from DRAM once and from L2 after.

Grid: ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), split_k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .tiles import dequant_gemm_layout_tile, dequant_gemv_layout_tile


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


@triton.jit
def _store_tile(out_ptr, bias_ptr, acc, offs_m, offs_n, M, N, stride_om, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def awq_matmul_kernel(
    # pointers
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, bias_ptr, out_ptr, workspace_ptr, tickets_ptr,
    # sizes
    M, N, K, k_iters_per_split, split_k,
    # strides (the last dimension of every tensor is contiguous)
    stride_xm, stride_qweight, stride_qzeros, stride_scales, stride_om,
    # meta-parameters
    GEMV_LAYOUT: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_SPLIT_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = pid_k * k_iters_per_split * BLOCK_K
    k_end = tl.minimum(k_start + k_iters_per_split * BLOCK_K, K)

    # --- accumulate x[:, k_start:k_end] @ W[k_start:k_end, :] ------------------------------
    if BLOCK_M == 1:  # FMA path: reduce over K once, after the loop
        if GEMV_LAYOUT:
            acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        else:
            acc2 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if BLOCK_M == 1:
            x = tl.load(x_ptr + pid_m * stride_xm + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            if GEMV_LAYOUT:
                w = dequant_gemv_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_n, k0, K, N,
                                             stride_qweight, stride_qzeros, stride_scales,
                                             GROUP_SIZE, BLOCK_K, BLOCK_N)
                acc2 += w.to(tl.float32) * x[None, :]
            else:
                w = dequant_gemm_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_k, pid_n, k0, K, N,
                                             stride_qweight, stride_qzeros, stride_scales,
                                             GROUP_SIZE, BLOCK_K, BLOCK_N)
                acc2 += w.to(tl.float32) * x[:, None]
        else:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0).to(tl.float16)
            if GEMV_LAYOUT:
                w = dequant_gemv_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_n, k0, K, N,
                                             stride_qweight, stride_qzeros, stride_scales,
                                             GROUP_SIZE, BLOCK_K, BLOCK_N)
                acc = tl.dot(x, tl.trans(w), acc)
            else:
                w = dequant_gemm_layout_tile(qweight_ptr, qzeros_ptr, scales_ptr, offs_k, pid_n, k0, K, N,
                                             stride_qweight, stride_qzeros, stride_scales,
                                             GROUP_SIZE, BLOCK_K, BLOCK_N)
                acc = tl.dot(x, w, acc)
    if BLOCK_M == 1:
        if GEMV_LAYOUT:
            acc = tl.sum(acc2, axis=1)[None, :]
        else:
            acc = tl.sum(acc2, axis=0)[None, :]

    # --- write out, or meet the other splits in the workspace ------------------------------
    if not USE_SPLIT_K:
        _store_tile(out_ptr, bias_ptr, acc, offs_m, offs_n, M, N, stride_om, HAS_BIAS)
    else:
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        partial_ptrs = workspace_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.atomic_add(partial_ptrs, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial sum is in before the ticket is taken
        ticket_ptr = tickets_ptr + pid_m * tl.num_programs(1) + pid_n
        if tl.atomic_add(ticket_ptr, 1) == split_k - 1:  # the last split of this tile
            total = tl.atomic_add(partial_ptrs, tl.zeros_like(acc), mask=mask)  # coherent read
            tl.store(partial_ptrs, tl.zeros_like(acc), mask=mask)
            tl.atomic_xchg(ticket_ptr, 0)
            _store_tile(out_ptr, bias_ptr, total, offs_m, offs_n, M, N, stride_om, HAS_BIAS)


# --- launcher ----------------------------------------------------------------------------------

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
    if cfg.block_k > group_size or group_size % cfg.block_k:
        raise ValueError(f"BLOCK_K={cfg.block_k} must divide group_size={group_size}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=out_dtype or x.dtype, device=x.device)
    grid_m, grid_n = triton.cdiv(M, cfg.block_m), triton.cdiv(N, cfg.block_n)
    k_iters = triton.cdiv(triton.cdiv(K, cfg.block_k), cfg.split_k)
    if cfg.split_k > 1:
        workspace, tickets = _workspace(x.device, max(M, 16), N, grid_m * grid_n)
    else:
        workspace, tickets = out, out  # unused
    awq_matmul_kernel[(grid_m, grid_n, cfg.split_k)](
        x, qweight, qzeros, scales, bias if bias is not None else out, out, workspace, tickets,
        M, N, K, k_iters, cfg.split_k,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0),
        GEMV_LAYOUT=gemv_layout, GROUP_SIZE=group_size, HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, USE_SPLIT_K=cfg.split_k > 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
