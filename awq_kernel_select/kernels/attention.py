"""Decode attention: one query token per sequence against a KV cache, split along the keys.

Why it is here: in the compiled 7B-shaped decode step with programmatic dependent launch
(PDL), every kernel but two takes part in the launch chain: ``lm_head`` (cuBLAS) and
attention (cuDNN, ~7 us per layer on 32 CTAs at 144 keys: one CTA per head). This kernel
spreads each head's keys over several programs so that the whole GPU works on the cache, and
launches with PDL like the packed linears (``matmul._wait_for_previous_kernel``).

Per (sequence, head, split of the keys) one program computes, in base 2,
``s = (q . k) * scale * log2(e) + mask * log2(e)``, a running maximum ``m``, ``l = sum 2^(s - m)``
and ``acc = sum 2^(s - m) v`` in fp32 (the online softmax of the flash-attention papers, one
query row). With one split it writes ``acc / l``. With several, each writes its ``(m, l, acc)``
to a workspace and takes a ticket (an atomic counter per head, as the split-K linears do); the
last split of a head merges them: ``M = max m_s``, ``out = sum 2^(m_s - M) acc_s / sum 2^(m_s - M) l_s``,
and puts the ticket back to zero (one launch, no memset, safe to capture in a CUDA graph).

Semantics are those of ``torch.nn.functional.scaled_dot_product_attention`` with ``attn_mask``
(additive float, or bool with True = attend) and grouped-query heads (head ``h`` reads key/value
head ``h // (H / H_kv)``). One difference: a row whose keys are all masked out by a bool mask
averages their values where SDPA returns NaN (an additive mask of ``finfo.min``, as transformers
builds it, behaves as in SDPA, in fp16 and bf16; ``-inf`` is taken as ``-1e29``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .dispatch import DispatchPlan, default_plan
from .launch import interpreting, launch
from .matmul import _cdiv, _wait_for_previous_kernel, TRITON_HAS_PDL
from .scratch import current_stream, persistent_zeros

LOG2E = 1.4426950408889634


@triton.jit
def decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, partial_ptr, stats_ptr, tickets_ptr,
    kv_len, keys_per_split, n_splits, qk_scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_mb, stride_mh, stride_ob, stride_oh,
    HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    MAX_SPLITS: tl.constexpr, MASK_KIND: tl.constexpr, PDL: tl.constexpr,
):
    _wait_for_previous_kernel(PDL)  # q and the cache were written by the kernels just before
    pid = tl.program_id(0)  # sequence * HEADS + head
    split = tl.program_id(1)
    seq = pid // HEADS
    head = pid % HEADS
    kv_head = head // GROUP
    offs_d = tl.arange(0, HEAD_DIM)

    # the scale and log2(e) folded into q: scores come out in base 2
    q = tl.load(q_ptr + seq * stride_qb + head * stride_qh + offs_d).to(tl.float32) * qk_scale
    k_base = k_ptr + seq * stride_kb + kv_head * stride_kh
    v_base = v_ptr + seq * stride_vb + kv_head * stride_vh
    mask_base = mask_ptr + seq * stride_mb + head * stride_mh

    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, kv_len)
    m_i = tl.full((), -1.0e30, tl.float32)  # finite: 2^(m_old - m_new) is never NaN
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        inside = offs_n < end
        # v is loaded with k, before the scores: both on their way at once
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=inside[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=inside[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        if MASK_KIND == 1:
            # additive. bf16's finfo.min times log2(e) would overflow fp32: clamped, to -1e29 so
            # that the clamped scores (-1.44e29) stay above m_i's start (-1e30): a row masked out
            # everywhere then averages its values, as SDPA does, instead of 0 / 0
            bias = tl.maximum(tl.load(mask_base + offs_n, mask=inside, other=0.0).to(tl.float32), -1.0e29)
            s += bias * 1.4426950408889634
        elif MASK_KIND == 2:  # bool (as bytes): 1 = attend
            keep = tl.load(mask_base + offs_n, mask=inside, other=0) != 0
            s = tl.where(keep, s, -1.0e30)
        s = tl.where(inside, s, float("-inf"))  # past the split: weight 0
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        m_i = m_new

    out_ptrs = out_ptr + seq * stride_ob + head * stride_oh + offs_d
    if MAX_SPLITS == 1:
        tl.store(out_ptrs, (acc / l_i).to(out_ptr.dtype.element_ty))
    else:
        slot = pid * MAX_SPLITS + split
        tl.store(partial_ptr + slot * HEAD_DIM + offs_d, acc)
        tl.store(stats_ptr + 2 * slot, m_i)
        tl.store(stats_ptr + 2 * slot + 1, l_i)
        tl.debug_barrier()  # every thread's part is written before the ticket is taken
        if tl.atomic_add(tickets_ptr + pid, 1) == n_splits - 1:  # the head's last split merges
            offs_s = tl.arange(0, MAX_SPLITS)
            used = offs_s < n_splits
            first = pid * MAX_SPLITS
            m_s = tl.load(stats_ptr + 2 * (first + offs_s), mask=used, other=-1.0e30, cache_modifier=".cg")
            l_s = tl.load(stats_ptr + 2 * (first + offs_s) + 1, mask=used, other=0.0, cache_modifier=".cg")
            acc_s = tl.load(partial_ptr + (first + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                            mask=used[:, None], other=0.0, cache_modifier=".cg")
            m_all = tl.max(m_s, axis=0)
            w = tl.where(used, tl.exp2(m_s - m_all), 0.0)
            total = tl.sum(w[:, None] * acc_s, axis=0) / tl.sum(w * l_s, axis=0)
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty))
            tl.atomic_xchg(tickets_ptr + pid, 0)


@dataclass(frozen=True)
class DecodeAttentionConfig:
    """How one launch splits the keys: ``block_n`` keys per loop step, about ``programs`` programs
    in all (at least one step of keys each), ``num_warps`` per program.

    The default was chosen on an H100 (``python -m benchmarks.sdpa_decode --aks-sweep``, 32 heads
    of 128, 32 layers' calls in one CUDA graph; that sweep's data was not kept): 32 keys per step
    and 4 warps at 144 keys, 64 keys per step over 4 programs per SM at 1040 keys (one step of 64
    beat two of 32). On an H200 (2026-12-04, ``docs/data/sdpa-decode-h200.json``) it runs 6.50 us
    per call at 144 keys (cuDNN 6.68) and 11.96 us at 1040 (cuDNN 13.70). ``block_n=None`` takes
    64 where a split gets more than 32 keys, else 32."""

    block_n: int | None = None
    programs: int | None = None  # None: 4 per SM of the GPU
    num_warps: int = 4

    def splits(self, kv_len: int, heads_total: int, multiprocessors: int) -> tuple[int, int, int]:
        """``(block_n, keys_per_split, n_splits)`` for ``heads_total`` (sequence, head) pairs on a
        GPU of ``multiprocessors`` SMs (the interpreter's plan says 4: a few splits, so that the
        tests see the merge)."""
        target = self.programs if self.programs is not None else 4 * multiprocessors
        per_head = max(1, _cdiv(target, heads_total))
        block_n = self.block_n or (64 if _cdiv(kv_len, per_head) > 32 else 32)
        wanted = min(per_head, _cdiv(kv_len, block_n), 64)
        keys_per_split = _cdiv(_cdiv(kv_len, wanted), block_n) * block_n
        return block_n, keys_per_split, _cdiv(kv_len, keys_per_split)


DEFAULT_CONFIG = DecodeAttentionConfig()


_WORKSPACES: dict[tuple[torch.device, int, int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, stream: int, slots: int, head_dim: int, heads_total: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partial sums ``[slots, head_dim]``, their ``(m, l)`` and a zero ticket per head, shared
    by every launch of these sizes on one stream (launches on a stream are ordered; another
    stream gets its own, so concurrent requests never merge each other's splits). Never
    replaced: a CUDA graph that captured them keeps their addresses. Allocated by
    ``scratch.persistent_zeros``."""
    key = (device, stream, slots, head_dim, heads_total)
    found = _WORKSPACES.get(key)
    if found is None:
        partial, stats, tickets = persistent_zeros(
            device, ((slots * head_dim, torch.float32), (2 * slots, torch.float32), (heads_total, torch.int32)))
        found = _WORKSPACES[key] = (partial, stats, tickets)
    return found


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"decode attention takes one query token per sequence: q [B, H, 1, D], got {tuple(q.shape)}")
    if k.dim() != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k and v must be [B, H_kv, L, D] like q [B, H, 1, D]: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads cannot share {k.shape[1]} key/value heads evenly")
    head_dim = q.shape[3]
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim}: the kernel takes powers of two from 16 to 256 (use SDPA)")
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, float16 or bfloat16: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[2] == 0:
        raise ValueError("the KV cache is empty")
    if mask is not None:
        b, h, rows, cols = (mask.shape if mask.dim() == 4 else (0, 0, 0, 0))
        if mask.dim() != 4 or b not in (1, q.shape[0]) or h not in (1, q.shape[1]) or rows != 1 or cols < k.shape[2]:
            raise ValueError(f"mask must be [B or 1, H or 1, 1, >= L] for q {tuple(q.shape)} and L = {k.shape[2]}, "
                             f"got {tuple(mask.shape)}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(f"mask must be bool (True = attend) or additive float, got {mask.dtype}")


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     scale: float | None = None, *, pdl: bool = False, plan: DispatchPlan | None = None,
                     config: DecodeAttentionConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` for one query token per sequence.

    ``q [B, H, 1, D]``, ``k, v [B, H_kv, L, D]`` (any strides with the last dimension
    contiguous), ``mask`` ``[B or 1, H or 1, 1, >= L]`` (the first ``L`` columns are used; bool
    True = attend, or added to the scores), ``scale`` default ``D ** -0.5``. Returns
    ``[B, 1, H, D]`` in q's dtype (what transformers' attention functions return). ``plan``:
    the GPU's :class:`~awq_kernel_select.kernels.dispatch.DispatchPlan` (default: the one built
    for q's device), whose SM count sets how far the keys are split; ``pdl`` launches with
    programmatic dependent launch where the plan says the GPU has it (sm90+)."""
    _check_inputs(q, k, v, mask)
    batch, heads, _, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if mask is None:
        mask_kind, mask_t, stride_mb, stride_mh = 0, q, 0, 0
    else:
        mask_t = mask if mask.stride(-1) == 1 else mask.contiguous()
        mask_kind = 2 if mask_t.dtype == torch.bool else 1
        if mask_kind == 2:
            mask_t = mask_t.view(torch.uint8)
        stride_mb = mask_t.stride(0) if mask_t.shape[0] > 1 else 0
        stride_mh = mask_t.stride(1) if mask_t.shape[1] > 1 else 0
    out = torch.empty(batch, 1, heads, head_dim, dtype=q.dtype, device=q.device)
    heads_total = batch * heads
    plan = default_plan(q.device) if plan is None else plan
    block_n, keys_per_split, n_splits = config.splits(kv_len, heads_total, plan.multiprocessors)
    max_splits = triton.next_power_of_2(n_splits)
    if n_splits > 1:
        partial, stats, tickets = _workspace(q.device, current_stream(q.device), heads_total * max_splits, head_dim,
                                             heads_total)
    else:
        partial = stats = tickets = out  # unused
    scale = head_dim ** -0.5 if scale is None else scale
    use_ptx = q.is_cuda and torch.version.hip is None and not interpreting()
    pdl = use_ptx and pdl and plan.pdl_capable and TRITON_HAS_PDL
    args = (q, k, v, mask_t, out, partial, stats, tickets, kv_len, keys_per_split, n_splits, scale * LOG2E,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            stride_mb, stride_mh, out.stride(0), out.stride(2))
    meta = dict(HEADS=heads, GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_N=block_n,
                MAX_SPLITS=1 if n_splits == 1 else max_splits, MASK_KIND=mask_kind, PDL=pdl)
    launch(decode_attention_kernel, (heads_total, n_splits, 1), args, meta, config.num_warps, 1, launch_pdl=pdl)
    return out


def reference_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                               scale: float | None = None) -> torch.Tensor:
    """The same in float64 with plain torch (the tests' reference): ``[B, 1, H, D]``."""
    group = q.shape[1] // k.shape[1]
    k64, v64 = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    scores = (q.double() @ k64.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        cols = mask[..., : k.shape[2]]
        scores = scores.masked_fill(~cols, float("-inf")) if cols.dtype == torch.bool else scores + cols.double()
    return (torch.softmax(scores, dim=-1) @ v64).transpose(1, 2)
