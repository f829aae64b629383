"""A Hopper tensor-core tile for several to many tokens (batched decode, prefill), in Gluon.

``out = x @ W^T + bias`` from the GEMV layout's words (``qweight [N, K/8]``) on sm_90, x in
fp16 or bf16. The ``tl.dot`` tiles of ``matmul.py`` run each K step as one serial chain (load,
decode, store to shared memory, fence, barrier, wgmma, wait), and nothing overlaps the MMA of
one step with the decode of the next. Gluon lets the kernel say what Triton's pipeliner does not:

* x and the packed words go to shared memory by ``cp.async``, ``AHEAD`` steps in advance, in a
  ring of ``STAGES`` buffers;
* each step decodes its words from shared memory in registers (``_dequant8``: four
  PRMT/LOP3/HSUB2/HMUL2 chains per word, ``(q - z) * s`` rounded once as AutoAWQ does) and
  stores the tile to one of two shared buffers;
* the wgmma (x from shared memory as A, the decoded ``W^T`` as B; with ``W_FIRST`` the other
  way round, ``out^T = W @ x^T``, for few tokens) is issued asynchronously and waited for one
  step later, so the tensor cores work while the next step decodes;
* with ``W_FIRST`` and ``A_REGS`` the weights are decoded straight into the registers of
  wgmma's A operand (``_decode_pair``, ``_a_operand_layout``): no decoded tile in shared memory,
  one barrier per step, and two steps per loop trip so that no step writes the A registers of
  the wgmma still running (``_k_step``).

Shared buffers are reused only once every warp group has waited for the wgmma that read them:
a barrier at the top of each step follows every warp group's ``warpgroup_mma_wait(1)``.
Gluon kernels do not run under ``TRITON_INTERPRET``; on the CPU the tests compile this one for
sm_90 and check its instructions, and on a GPU against a float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from .launch import launch
from .matmul import MatmulConfig, Replay, _cdiv, _workspace, kept_launch, split_k_iters
from .scratch import current_stream

# Names that changed after Triton 3.6 (the GPU stack): cp.async into shared memory, the CTA barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


#: shared memory one program may take on an sm_90 GPU (227 KiB), less a margin for the compiler's own
SHARED_MEMORY = 220 * 1024


@dataclass(frozen=True)
class HopperConfig:
    """One tile of ``awq_hopper_kernel``: ``block_m`` tokens by ``block_n`` output columns by
    ``block_k`` of K (dividing the group size); ``ahead`` steps in flight, ``ahead + 2`` buffers;
    ``split_k`` programs share each output tile's K (their partial sums meet in ``matmul``'s fp32
    workspace, the last one writes the output).

    The wgmma's M side (16 rows per warp, at least 64) is the tokens (``block_m`` 64 or 128), or
    with ``w_first`` the output columns: ``out^T = W @ x^T``, ``block_n`` a multiple of 16 per
    warp and the tokens wgmma's N side, 8 to 256 in steps of 8, so that few tokens (M = 8..64)
    fill a tile without padding. ``a_regs`` (with ``w_first``) decodes the weights straight
    into the registers of wgmma's A operand instead of a shared buffer (``_a_operand_layout``)."""

    block_m: int = 64
    block_n: int = 128
    block_k: int = 64
    ahead: int = 2
    num_warps: int = 4
    split_k: int = 1
    w_first: bool = False
    a_regs: bool = False

    def __str__(self) -> str:
        return (f"HM{self.block_m}/BN{self.block_n}/BK{self.block_k}/A{self.ahead}/w{self.num_warps}"
                f"/S{self.split_k}{'/WF' if self.w_first else ''}{'/AR' if self.a_regs else ''}")

    def as_matmul(self) -> MatmulConfig:
        """The same tile in the measured tables' form (``num_stages`` = buffers = ``ahead + 2``),
        stored with ``path: "wgmma"``."""
        return MatmulConfig(self.block_m, self.block_n, self.block_k, self.split_k, self.num_warps, self.ahead + 2,
                            w_first=self.w_first, a_regs=self.a_regs)

    @staticmethod
    def from_matmul(cfg: MatmulConfig) -> HopperConfig:
        if cfg.prefetch or cfg.interleave_k or cfg.num_stages < 3:
            raise ValueError(f"{cfg} is no wgmma tile: it has prefetch or interleave_k, or fewer than 3 buffers")
        return HopperConfig(cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_stages - 2, cfg.num_warps, cfg.split_k,
                            cfg.w_first, cfg.a_regs)

    def shared_bytes(self) -> int:
        """Shared memory of the rings (x and words, ``ahead + 2`` steps) and, unless ``a_regs``,
        the two decoded tiles."""
        ring = (self.ahead + 2) * (self.block_m * self.block_k * 2 + self.block_n * self.block_k // 8 * 4)
        return ring + (0 if self.a_regs else 2 * self.block_n * self.block_k * 2)

    def check(self, group_size: int) -> None:
        rows, cols = (self.block_n, self.block_m) if self.w_first else (self.block_m, self.block_n)
        side = "block_n" if self.w_first else "block_m"
        if self.num_warps not in (4, 8) or rows % (16 * self.num_warps) or rows > 256:
            raise ValueError(f"{self}: {side} (wgmma's M side) must hold 16 rows per warp, at most 256, "
                             f"on 4 or 8 warps")
        if cols % 8 or not 8 <= cols <= 256 or (not self.w_first and cols % 16):
            raise ValueError(f"{self}: {'block_m' if self.w_first else 'block_n'} (wgmma's N side) must be a "
                             f"multiple of {8 if self.w_first else 16} up to 256")
        if self.block_k not in (32, 64, 128) or group_size % self.block_k:
            raise ValueError(f"{self}: block_k must be 32, 64 or 128 and divide the group size {group_size}")
        if self.shared_bytes() > SHARED_MEMORY:
            raise ValueError(f"{self}: needs {self.shared_bytes() // 1024} KiB of shared memory, an H100 has "
                             f"{SHARED_MEMORY // 1024}: fewer steps ahead, or a smaller block_k or tile")
        if self.a_regs and not self.w_first:
            raise ValueError(f"{self}: a_regs puts the weights in wgmma's A operand, which they are only with w_first")


# One packed word to its 8 weights ``(q - z) * s`` in K order, as four 16-bit pairs: with ``t``
# the word shifted right by 4, a PRMT puts byte b of the word in the low half and byte b of ``t``
# in the high half, so one LOP3 leaves nibbles 2b and 2b + 1 in the mantissas of 0x6400 (fp16
# ``1024 + q``) or 0x4300 (bf16 ``128 + q``); subtracting ``$9`` = the same of the zero gives the
# exact ``q - z``, one multiply by ``$10`` = (s, s) rounds once, as AutoAWQ's ``(q - z) * s``.
# 17 instructions per word; bf16x2 subtract and multiply need sm_90, which this kernel does.
_PAIR = """
prmt.b32 v, $8, t, {sel};
lop3.b32 v, v, m, e, 0xEA;
sub.{ty} v, v, $9;
mul.{ty} v, v, $10;
mov.b32 {{{lo}, {hi}}}, v;
"""


def _dequant8_ptx(bf16: bool) -> str:
    ty = "rn.bf16x2" if bf16 else "rn.f16x2"
    pairs = "".join(_PAIR.format(sel=f"0x{4 + b:x}{4 + b:x}{b:x}{b:x}", ty=ty, lo=f"${2 * b}", hi=f"${2 * b + 1}")
                    for b in range(4))
    return ("{\n.reg .b32 v, t, m, e;\nshr.u32 t, $8, 4;\nmov.b32 m, 0x000F000F;\n"
            f"mov.b32 e, {'0x43004300' if bf16 else '0x64006400'};\n{pairs}}}")


_DEQUANT8_F16: gl.constexpr = gl.constexpr(_dequant8_ptx(False))
_DEQUANT8_BF16: gl.constexpr = gl.constexpr(_dequant8_ptx(True))


@gluon.jit
def _dequant8(words, zz, ss, BF16: gl.constexpr):
    if BF16:
        return gl.inline_asm_elementwise(_DEQUANT8_BF16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [words, zz, ss],
                                         dtype=(gl.bfloat16, ) * 8, is_pure=True, pack=1)
    else:
        return gl.inline_asm_elementwise(_DEQUANT8_F16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [words, zz, ss],
                                         dtype=(gl.float16, ) * 8, is_pure=True, pack=1)


@gluon.jit
def _decode_tile(words, zz, ss, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, BF16: gl.constexpr):
    """``W [BLOCK_N, BLOCK_K]`` (fp16, or bf16) in K order from ``words [BLOCK_N, BLOCK_K / 8]``;
    ``zz`` and ``ss`` (``[BLOCK_N, 1]``): each row's zero and scale, both halves, as 16-bit pairs."""
    o0, o1, o2, o3, o4, o5, o6, o7 = _dequant8(words, zz, ss, BF16)
    # join puts its new axis last: element [n, j, a, b, c] below is o_{4a + 2b + c}, i.e. K 8j + 4a + 2b + c
    w = gl.join(gl.join(gl.join(o0, o4), gl.join(o2, o6)), gl.join(gl.join(o1, o5), gl.join(o3, o7)))
    return gl.reshape(w, (BLOCK_N, BLOCK_K))


# With ``a_regs`` each thread decodes, of every word it reads, only the pair of weights that
# wgmma's A operand wants in its registers: K 8j + 2p and 8j + 2p + 1 of word j, p = lane % 4
# (``_a_operand_layout``). fp16: a PRMT copies byte p of the word into both halves and one LOP3
# keeps its low nibble under 0x6400 (``1024 + q``) and its high nibble under 0x5400 (``64 + q``:
# bits 4..7 are worth 1/16 there), so no shift is needed; bf16, whose 7 mantissa bits take a
# nibble only in bits 0..3, takes byte p of the word shifted right by 4 for the high half. Then
# ``$4`` (the same patterns of the zero) is subtracted and ``$5`` = (s, s) multiplied, as above:
# 4 instructions per pair (bf16: 5). ``$3``: the PRMT selector of pair p.
_A_PAIR_F16: gl.constexpr = gl.constexpr("""{
.reg .b32 v;
prmt.b32 v, $2, $2, $3;
lop3.b32 v, v, 0x00F0000F, 0x54006400, 0xEA;
sub.rn.f16x2 v, v, $4;
mul.rn.f16x2 v, v, $5;
mov.b32 {$0, $1}, v;
}""")
_A_PAIR_BF16: gl.constexpr = gl.constexpr("""{
.reg .b32 v, t;
shr.u32 t, $2, 4;
prmt.b32 v, $2, t, $3;
lop3.b32 v, v, 0x000F000F, 0x43004300, 0xEA;
sub.rn.bf16x2 v, v, $4;
mul.rn.bf16x2 v, v, $5;
mov.b32 {$0, $1}, v;
}""")


@gluon.jit
def _decode_pair(words, pair, zz, ss, BF16: gl.constexpr):
    """Weights K ``2 pair`` and ``2 pair + 1`` of each word, ``(q - z) * s`` (two 16-bit tensors),
    the arguments broadcast against each other; ``zz`` from ``_a_zero_bits``, ``ss`` as in ``_dequant8``."""
    if BF16:
        return gl.inline_asm_elementwise(_A_PAIR_BF16, "=h,=h,r,r,r,r", [words, 0x4400 + pair * 0x1111, zz, ss],
                                         dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=1)
    else:
        return gl.inline_asm_elementwise(_A_PAIR_F16, "=h,=h,r,r,r,r", [words, pair * 0x1111, zz, ss],
                                         dtype=(gl.float16, gl.float16), is_pure=True, pack=1)


@gluon.jit
def _a_zero_bits(z, BF16: gl.constexpr):
    """The zero as ``_decode_pair`` subtracts it: bf16 ``128 + z`` in both halves; fp16
    ``1024 + z`` in the low half and ``64 + z`` in the high one."""
    if BF16:
        return (0x4300 | z) * 0x10001
    else:
        return (0x6400 | z) | ((0x5400 | (z << 4)) << 16)


@gluon.constexpr_function
def _a_operand_layout(block_n, block_k, num_warps):
    """``[block_n, block_k / 8, 4]``: row n, word j, pair p, laid out so that the pairs, joined
    with their two weights last and reshaped to ``[block_n, block_k]`` (K = 8j + 2p + h), are
    exactly wgmma's A operand in registers (``DotOperandLayout(0, mma, k_width=2)``): lane
    ``4g + p`` of warp w holds rows 16w + g and 16w + g + 8 (and those 16 num_warps further on)
    and pair p of each of their words. The words themselves (this layout sliced at the pair axis)
    are read by the four lanes of a row group alike."""
    regs = [[8, 0, 0]] + [[0, 1 << i, 0] for i in range((block_k // 8).bit_length() - 1)]
    regs += [[16 * num_warps << i, 0, 0] for i in range(max(0, (block_n // (16 * num_warps)).bit_length() - 1))]
    lanes = [[0, 0, 1], [0, 0, 2], [1, 0, 0], [2, 0, 0], [4, 0, 0]]
    warps = [[16 << i, 0, 0] for i in range(num_warps.bit_length() - 1)]
    return gl.DistributedLinearLayout(regs, lanes, warps, [], [block_n, block_k // 8, 4])


@gluon.constexpr_function
def _decode_layout(block_n, block_k, num_warps, a_regs):
    """The words' layout where they are decoded: for ``a_regs`` each thread's rows' words, of
    which it takes one pair each (``_a_operand_layout``); else whole rows of words per thread
    (its zero and scale once per row)."""
    if a_regs:
        return gl.SliceLayout(2, _a_operand_layout(block_n, block_k, num_warps))
    return _copy_layout(block_n, block_k // 8, block_n * block_k // 8 // (32 * num_warps), num_warps)


@gluon.jit
def _issue(x_ring, w_ring, x_ptrs, x_mask, w_ptrs, w_mask, i, n_iters, STAGES: gl.constexpr, BLOCK_K: gl.constexpr):
    """Start copying step ``i``'s x tile and words into buffer ``i % STAGES`` (nothing past the last step)."""
    stage = i % STAGES
    live = i < n_iters
    _async_load(x_ring.index(stage), x_ptrs + i * BLOCK_K, mask=x_mask & live)
    _async_load(w_ring.index(stage), w_ptrs + i * (BLOCK_K // 8), mask=w_mask & live)
    async_copy.commit_group()


@gluon.jit
def _zero_scale(qzeros_ptr, scales_ptr, rows, live, group, stride_qzeros, stride_scales):
    """The packed zero word holding ``group``'s zero (int32) and ``group``'s scale, per row."""
    zw = gl.load(qzeros_ptr + rows * stride_qzeros + group // 8, mask=live, other=0)
    s = gl.load(scales_ptr + rows * stride_scales + group, mask=live, other=0.0)
    return zw, s


@gluon.constexpr_function
def _copy_layout(rows, cols, vec, num_warps):
    """Rows of ``cols`` elements, ``vec`` contiguous per thread, over ``num_warps`` warps."""
    along = max(1, min(32, cols // vec))
    return gl.BlockedLayout([1, vec], [32 // along, along], [num_warps, 1], [1, 0])


@gluon.jit
def _zero_scale_bits(zw, s, step, GROUP_SIZE: gl.constexpr, BLOCK_K: gl.constexpr, BF16: gl.constexpr,
                     A_REGS: gl.constexpr):
    """The zero and scale of K step ``step`` as the decode takes them (``zz``, ``ss``), from the
    packed zero word ``zw`` and the scale ``s`` of its group."""
    group = step * BLOCK_K // GROUP_SIZE
    z = (zw >> ((group % 8) * 4)) & 0xF
    if A_REGS:
        zz = _a_zero_bits(z, BF16)
    elif BF16:  # bits of 128 + z in both halves
        zz = (0x4300 | z) * 0x10001
    else:  # of 1024 + z
        zz = (0x6400 | z) * 0x10001
    if BF16:  # bits of bf16(s) in both halves
        ss = (s.to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF) * 0x10001
    else:  # of s
        ss = (s.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF) * 0x10001
    return zz, ss


@gluon.jit
def _k_step(i, acc, zz, ss, x_ring, q_ring, w_bufs, x_ptrs, x_mask, q_ptrs, q_mask, pair, n_iters,
            BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, AHEAD: gl.constexpr, W_FIRST: gl.constexpr,
            A_REGS: gl.constexpr, d_layout: gl.constexpr, mma_layout: gl.constexpr):
    """K step ``i`` (of this split's): decode its words with the zero and scale bits ``zz``,
    ``ss``, issue its wgmma, and wait for the wgmma before it.

    With ``A_REGS`` the wgmma reads the weights from registers while it runs, and the next step
    decodes before waiting for it: the caller unrolls its loop by two, so that consecutive steps
    decode into different registers (no instruction writes an A register of a wgmma in flight)."""
    DTYPE: gl.constexpr = x_ring.dtype
    BF16: gl.constexpr = DTYPE == gl.bfloat16
    STAGES: gl.constexpr = AHEAD + 2
    async_copy.wait_group(AHEAD - 1)  # this thread's copies of step i have landed
    _barrier()  # and everyone's; every warp group is past the wgmma of step i - 2
    _issue(x_ring, q_ring, x_ptrs, x_mask, q_ptrs, q_mask, i + AHEAD, n_iters, STAGES, BLOCK_K)
    words = q_ring.index(i % STAGES).load(d_layout)
    if A_REGS:
        lo, hi = _decode_pair(words[:, :, None], pair, zz[:, None, None], ss[:, None, None], BF16)
        w = gl.reshape(gl.join(lo, hi), (BLOCK_N, BLOCK_K))  # K = 8 word + 2 pair + half
        w = gl.convert_layout(w, gl.DotOperandLayout(0, mma_layout, 2), assert_trivial=True)
        fence_async_shared()  # the x tile, copied by cp.async, is read by the wgmma (the async proxy)
        acc = warpgroup_mma(w, x_ring.index(i % STAGES).permute((1, 0)), acc, is_async=True)
    else:
        w = _decode_tile(words, zz[:, None], ss[:, None], BLOCK_N, BLOCK_K, BF16)
        w_buf = w_bufs.index(i % 2)
        w_buf.store(w)
        fence_async_shared()
        _barrier()
        if W_FIRST:
            acc = warpgroup_mma(w_buf, x_ring.index(i % STAGES).permute((1, 0)), acc, is_async=True)
        else:
            acc = warpgroup_mma(x_ring.index(i % STAGES), w_buf.permute((1, 0)), acc, is_async=True)
    return warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))


@gluon.jit
def awq_hopper_kernel(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, bias_ptr, out_ptr, workspace_ptr, tickets_ptr,
                      M, N, K, k_iters_per_split, split_k,
                      stride_xm, stride_qweight, stride_qzeros, stride_scales, stride_om,
                      GROUP_SIZE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      BLOCK_K: gl.constexpr, AHEAD: gl.constexpr, USE_SPLIT_K: gl.constexpr,
                      HAS_BIAS: gl.constexpr, W_FIRST: gl.constexpr, A_REGS: gl.constexpr):
    NUM_WARPS: gl.constexpr = gl.num_warps()
    DTYPE: gl.constexpr = x_ptr.dtype.element_ty
    BF16: gl.constexpr = DTYPE == gl.bfloat16
    STAGES: gl.constexpr = AHEAD + 2
    pid_n = gl.program_id(0)
    pid_m = gl.program_id(1)
    pid_k = gl.program_id(2)

    # global -> shared: 16 bytes per thread and copy
    x_layout: gl.constexpr = _copy_layout(BLOCK_M, BLOCK_K, 8, NUM_WARPS)
    q_layout: gl.constexpr = _copy_layout(BLOCK_N, BLOCK_K // 8, 4, NUM_WARPS)
    rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, x_layout))
    cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, x_layout))
    first = pid_k * k_iters_per_split  # this split's K steps: first, first + 1, ... (n_iters of them)
    n_iters = gl.minimum(K // BLOCK_K - first, k_iters_per_split)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + first * BLOCK_K + cols[None, :]
    x_mask = (rows[:, None] < M) & (cols[None, :] < BLOCK_K)
    q_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, q_layout))
    q_cols = gl.arange(0, BLOCK_K // 8, layout=gl.SliceLayout(0, q_layout))
    q_ptrs = qweight_ptr + q_rows[:, None] * stride_qweight + first * (BLOCK_K // 8) + q_cols[None, :]
    q_mask = (q_rows[:, None] < N) & (q_cols[None, :] < BLOCK_K // 8)

    x_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], DTYPE)
    w_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], DTYPE)
    q_smem_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    x_ring = gl.allocate_shared_memory(DTYPE, [STAGES, BLOCK_M, BLOCK_K], x_smem_layout)
    q_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, BLOCK_K // 8], q_smem_layout)
    d_layout: gl.constexpr = _decode_layout(BLOCK_N, BLOCK_K, NUM_WARPS, A_REGS)
    if A_REGS:  # decode into wgmma's A registers
        a_layout: gl.constexpr = _a_operand_layout(BLOCK_N, BLOCK_K, NUM_WARPS)
        pair = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, a_layout)))[None, None, :]
        w_bufs = x_ring  # no decoded tile in shared memory (unused)
    else:  # decode into a shared buffer
        w_bufs = gl.allocate_shared_memory(DTYPE, [2, BLOCK_N, BLOCK_K], w_smem_layout)
        pair = 0  # (unused)
    d_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, d_layout))
    d_live = d_rows < N

    # acc: out [BLOCK_M, BLOCK_N], or with W_FIRST out^T [BLOCK_N, BLOCK_M]
    ACC_ROWS: gl.constexpr = BLOCK_N if W_FIRST else BLOCK_M
    ACC_COLS: gl.constexpr = BLOCK_M if W_FIRST else BLOCK_N
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                         instr_shape=[16, ACC_COLS, 16])
    acc = gl.zeros((ACC_ROWS, ACC_COLS), dtype=gl.float32, layout=mma_layout)

    for i in gl.static_range(AHEAD):
        _issue(x_ring, q_ring, x_ptrs, x_mask, q_ptrs, q_mask, i, n_iters, STAGES, BLOCK_K)
    # each row's zero word and scale, loaded one step (A_REGS: one trip of two steps) ahead, so that
    # their latency hides behind it
    zw, s = _zero_scale(qzeros_ptr, scales_ptr, d_rows, d_live, first * BLOCK_K // GROUP_SIZE, stride_qzeros,
                        stride_scales)
    if A_REGS:  # two steps per trip, so that each step's A registers are its own (see _k_step); every split
        # starts on an even step (the launcher sees to it), so where a group spans two steps or more both
        # steps of a trip are in one group and share its zero and scale. An odd last step is followed by
        # one past the split's end, whose copies, zeros and scales are all masked to zero: it adds nothing.
        SHARED: gl.constexpr = GROUP_SIZE >= 2 * BLOCK_K
        if not SHARED:  # the second step's group, also a trip ahead
            zw2, s2 = _zero_scale(qzeros_ptr, scales_ptr, d_rows, d_live & (n_iters > 1),
                                  (first + 1) * BLOCK_K // GROUP_SIZE, stride_qzeros, stride_scales)
        for i in range(0, n_iters, 2):
            zz, ss = _zero_scale_bits(zw, s, first + i, GROUP_SIZE, BLOCK_K, BF16, A_REGS)
            zw, s = _zero_scale(qzeros_ptr, scales_ptr, d_rows, d_live & (i + 2 < n_iters),
                                (first + i + 2) * BLOCK_K // GROUP_SIZE, stride_qzeros, stride_scales)
            if SHARED:
                zz2, ss2 = zz, ss
            else:
                zz2, ss2 = _zero_scale_bits(zw2, s2, first + i + 1, GROUP_SIZE, BLOCK_K, BF16, A_REGS)
                zw2, s2 = _zero_scale(qzeros_ptr, scales_ptr, d_rows, d_live & (i + 3 < n_iters),
                                      (first + i + 3) * BLOCK_K // GROUP_SIZE, stride_qzeros, stride_scales)
            acc = _k_step(i, acc, zz, ss, x_ring, q_ring, w_bufs, x_ptrs, x_mask, q_ptrs, q_mask, pair, n_iters,
                          BLOCK_N, BLOCK_K, AHEAD, W_FIRST, A_REGS, d_layout, mma_layout)
            acc = _k_step(i + 1, acc, zz2, ss2, x_ring, q_ring, w_bufs, x_ptrs, x_mask, q_ptrs, q_mask, pair,
                          n_iters, BLOCK_N, BLOCK_K, AHEAD, W_FIRST, A_REGS, d_layout, mma_layout)
    else:
        for i in range(n_iters):
            zz, ss = _zero_scale_bits(zw, s, first + i, GROUP_SIZE, BLOCK_K, BF16, A_REGS)
            zw, s = _zero_scale(qzeros_ptr, scales_ptr, d_rows, d_live & (i + 1 < n_iters),
                                (first + i + 1) * BLOCK_K // GROUP_SIZE, stride_qzeros, stride_scales)
            acc = _k_step(i, acc, zz, ss, x_ring, q_ring, w_bufs, x_ptrs, x_mask, q_ptrs, q_mask, pair, n_iters,
                          BLOCK_N, BLOCK_K, AHEAD, W_FIRST, A_REGS, d_layout, mma_layout)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))

    if W_FIRST:  # acc[n, m]: output rows along its second axis
        o_rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma_layout))[None, :]
        o_cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma_layout))[:, None]
    else:
        o_rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_layout))[:, None]
        o_cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_layout))[None, :]
    o_mask = (o_rows < M) & (o_cols < N)
    if USE_SPLIT_K:
        partial_ptrs = workspace_ptr + o_rows * N + o_cols
        gl.atomic_add(partial_ptrs, acc, mask=o_mask, sem="relaxed")  # ordered by the ticket
        _barrier()  # every thread's partial sum is in before the ticket is taken
        ticket_ptr = tickets_ptr + pid_m * gl.num_programs(0) + pid_n
        if gl.atomic_add(ticket_ptr, 1) == split_k - 1:  # the last split: read the sums, leave zeros
            zero = gl.zeros_like(acc)
            total = gl.atomic_add(partial_ptrs, zero, mask=o_mask)  # a coherent read
            gl.store(partial_ptrs, zero, mask=o_mask)
            gl.atomic_xchg(ticket_ptr, 0)
            _store_output(total, o_rows, o_cols, o_mask, out_ptr, bias_ptr, stride_om, N, HAS_BIAS)
    else:
        _store_output(acc, o_rows, o_cols, o_mask, out_ptr, bias_ptr, stride_om, N, HAS_BIAS)


@gluon.jit
def _store_output(total, rows, cols, mask, out_ptr, bias_ptr, stride_om, N, HAS_BIAS: gl.constexpr):
    """Write the finished sums (bias added) at ``out [rows, cols]`` (index tensors broadcasting
    against ``total``), in the output's dtype."""
    if HAS_BIAS:
        total += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
    gl.store(out_ptr + rows * stride_om + cols, total.to(out_ptr.dtype.element_ty), mask=mask)


def k_splits(k_steps: int, cfg: HopperConfig) -> tuple[int, int]:
    """K steps per split and the number of splits for ``cfg.split_k``, none empty; with ``a_regs``
    the steps per split are even, so that every split starts on an even step (two per trip)."""
    k_iters, split_k = split_k_iters(k_steps, cfg.split_k)
    if cfg.a_regs and k_iters % 2:
        k_iters, split_k = k_iters + 1, _cdiv(k_steps, k_iters + 1)
    return k_iters, split_k


def awq_hopper_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                      group_size: int, cfg: HopperConfig = HopperConfig(),
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ W^T + bias`` for x in fp16 or bf16 and the GEMV layout's int4 ``W [N, K]``:
    ``[M, N]`` in x's dtype."""
    return awq_hopper_matmul_with_replay(x, qweight, qzeros, scales, group_size, cfg, bias)[0]


def awq_hopper_matmul_with_replay(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                                  scales: torch.Tensor, group_size: int, cfg: HopperConfig,
                                  bias: torch.Tensor | None = None, out_shape: tuple[int, ...] | None = None
                                  ) -> tuple[torch.Tensor, Replay | None]:
    """:func:`awq_hopper_matmul`, and the same launch for a new input with almost no Python
    (``matmul.kept_launch``; None where Triton's launcher cannot be kept or ``x`` is not a
    contiguous, 16-byte aligned ``[M, K]``), its output in ``out_shape`` (default ``[M, N]``)."""
    M, K = x.shape
    N = qweight.shape[0]
    cfg.check(group_size)
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"awq_hopper_matmul takes fp16 or bf16 x, not {x.dtype}")
    if not x.is_cuda:
        raise ValueError(f"the wgmma tile runs on an sm_90 GPU (H100, H200); x is on {x.device}")
    if K % cfg.block_k:
        raise ValueError(f"K = {K} is not a multiple of block_k = {cfg.block_k}")
    x = x.contiguous()
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    k_iters, split_k = k_splits(K // cfg.block_k, cfg)
    grid = (_cdiv(N, cfg.block_n), _cdiv(M, cfg.block_m), split_k)
    stream = current_stream(x.device)
    rows, tiles = max(M, 16), grid[0] * grid[1]
    if split_k > 1:
        workspace, tickets = _workspace(x.device, stream, rows, N, tiles)
    else:
        workspace, tickets = out, out  # unused
    sizes = (M, N, K, k_iters, split_k, x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0),
             out.stride(0))
    args = (x, qweight, qzeros, scales, out if bias is None else bias, out, workspace, tickets, *sizes)
    meta = dict(GROUP_SIZE=group_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                AHEAD=cfg.ahead, USE_SPLIT_K=split_k > 1, HAS_BIAS=bias is not None, W_FIRST=cfg.w_first,
                A_REGS=cfg.a_regs)
    direct = launch(awq_hopper_kernel, grid, args, meta, cfg.num_warps, 1)  # eager calls skip Triton's binder
    if direct is None or x.data_ptr() % 16:
        return out, None
    scratch = (workspace, tickets) if split_k > 1 else None
    return out, kept_launch(direct, grid, stream, (qweight, qzeros, scales), bias, out, scratch, (rows, N, tiles),
                            (*sizes, *meta.values()), out_shape if out_shape is not None else (M, N))
