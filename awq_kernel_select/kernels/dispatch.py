"""Per-call dispatch: from the number of tokens M, pick the path and its tile configuration.

=========  ===========================================  =====================================
path       what runs                                    used for (defaults)
=========  ===========================================  =====================================
gemv       fused kernel, split-K, FMA (few tokens) or   M <= 16 (decode)
           16-row ``tl.dot``
gemm       fused kernel, ``tl.dot`` tiles (split-K      16 < M < 256 (batched decode)
           where tuned)
dequant    Triton dequantize to fp16 or bf16 (in        M >= 256 (prefill)
           L2-sized column chunks where that helps),
           cuBLAS
wgmma      the Gluon wgmma tile (``hopper.py``: GEMV    where a GPU's measured table says so;
           layout, sm_90), x and words by cp.async,     never by default
           the MMA of one K step overlapping the
           decode of the next
torch      plain torch dequantize + matmul              no GPU (and no ``TRITON_INTERPRET``)
=========  ===========================================  =====================================

The thresholds live in :class:`DispatchPolicy`, and a :class:`DispatchPlan` (one per GPU, built
at selection from the measured facts of that GPU: :mod:`awq_kernel_select.measured`) holds them
with the tiles measured best per shape. Where the plan has an entry for the shape, its tile
configuration is used, and for 16 < M < 1024 its measured choice between the fused kernels and
dequantize + cuBLAS; an entry that says ``wgmma`` is taken at any M, for M >= 1024 only from the
prefill buckets (1024, 4096).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from ..layouts import PackedWeights
from . import matmul
from .dequant import dequantize_triton
from .hopper import HopperConfig, awq_hopper_matmul_with_replay
from .launch import interpreting
from .matmul import MatmulConfig, Replay, awq_matmul_with_replay, pair_block_m
from .reference import EPILOGUES, Epilogue, apply_epilogue, output_width, reference_linear

KernelPath = Literal["gemv", "gemm", "dequant", "wgmma", "torch"]
PATHS: tuple[KernelPath, ...] = ("gemv", "gemm", "dequant", "wgmma", "torch")


@dataclass(frozen=True)
class DispatchPolicy:
    gemv_max_tokens: int = 16  # M <= this: the GEMV regime
    dequant_min_tokens: int = 256  # M >= this: dequantize + cuBLAS (a tuned entry may say otherwise)
    #: dequantize + cuBLAS goes through the layer in column chunks of at most this many fp16
    #: bytes, so that each chunk is written to and read back from L2 rather than DRAM
    #: (0: the whole layer at once) ...
    dequant_chunk_bytes: int = 32 * 2**20
    #: ... but only where a chunk still has this many columns (narrower cuBLAS calls lose more
    #: than L2 saves: H100 sweep, docs/kernels.md)
    dequant_chunk_min_cols: int = 2048

    def path_for(self, m: int) -> KernelPath:
        if m <= self.gemv_max_tokens:
            return "gemv"
        if m >= self.dequant_min_tokens:
            return "dequant"
        return "gemm"


DEFAULT_DISPATCH = DispatchPolicy()


def triton_usable(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreting()


def choose_path(m: int, device: torch.device, policy: DispatchPolicy = DEFAULT_DISPATCH) -> KernelPath:
    return policy.path_for(m) if triton_usable(device) else "torch"


def _pow2_floor(v: int) -> int:
    return 1 << (max(v, 1).bit_length() - 1)


def _split_k(programs: int, tiles: int, k_tiles: int, most: int, least: int = 1) -> int:
    """Splits of K per output tile: about ``programs`` programs in all (a power of two, at least
    ``least``), no more than the K tiles or ``most``."""
    return min(max(least, _pow2_floor(max(1, programs // tiles))), _pow2_floor(k_tiles), most)


def gemv_config(m: int, n: int, k: int, group_size: int, gemv_layout: bool, sm_count: int,
                bf16: bool = False) -> MatmulConfig:
    """Tiles for M <= 16: enough programs (4-8 per SM) that every SM streams weights.

    From the H100 sweeps (docs/kernels.md): the GEMV layout runs FMAs with every token in one
    program up to M = 2, the GEMM layout one FMA program row per token at M = 1; above, both run a
    16-row ``tl.dot`` ``out^T = W @ x^T`` on words decoded in fp16x2 pairs, loading the next tile
    early: best on 64 output columns x 128 K on 4 warps (GEMM layout) or 128 x 128 on 8 warps
    (GEMV layout), with 4 (GEMM) or 2 (GEMV) programs per SM. At M = 1 the GEMV layout's fp16x2
    kernel is best on 64 rows x 128 columns on 4 warps, loading the next tile early, with about 8
    programs per SM (256-row tiles ran up to 45% slower: docs/kernels.md, H100); at
    M = 2 256 rows on 4 warps (both tokens in one program); at M = 3 and 4 128 rows on 4 warps,
    four tokens per program (every 7B/70B shape of the H100's M = 4 sweep), which at M = 3 dots
    three; ``bf16`` x at M = 4 takes the 16-row ``tl.dot`` tile, which was faster for it. (The
    M = 1 tiles with ``interleave_k``, a few percent faster on the H100, are in its tuned table
    only: this heuristic is for GPUs nobody has timed.)
    """
    if gemv_layout and (m <= 3 or m == 4 and not bf16):
        block_k = min(group_size, 128)
        block_n = {1: 64, 2: 256}.get(m, 128)
        split = _split_k(8 * sm_count, -(-n // block_n), -(-k // block_k), 64 if m == 1 else 32)
        return MatmulConfig(pair_block_m(m), block_n, block_k, split, 4, 3, prefetch=m != 2)
    if not gemv_layout and m == 1:
        block_k = min(group_size, 64)
        return MatmulConfig(1, 256, block_k, _split_k(4 * sm_count, -(-n // 256), -(-k // block_k), 16), 4, 3)
    block_k = min(group_size, 128)
    block_n, warps, min_split = (128, 8, 4) if gemv_layout else (64, 4, 2)
    # 256 * sm_count // block_n programs: 4 per SM on 64-column tiles, 2 on 128-column ones
    split = _split_k(256 * sm_count // block_n, -(-n // block_n), -(-k // block_k), 32, min_split)
    return MatmulConfig(16, block_n, block_k, split, warps, 1, w_first=True, prefetch=True)


def wgmma_config(m: int, n: int, k: int, group_size: int, sm_count: int) -> MatmulConfig:
    """The wgmma tile where no table has one. Up to 64 tokens ``out^T = W @ x^T`` (``w_first``:
    128 output columns are wgmma's M side, the tokens, padded to 8, 16, 32 or 64, its N side),
    above that 64 tokens on 4 warps or, from 128, 128 on 8, by 128 columns; 64 of K; split-K up
    to 16 where the output tiles alone leave SMs idle. (A starting point: only the tuned tables
    route to this path.)"""
    block_k = min(group_size, 64)
    if m <= 64:  # w_first; tiles are few: split over twice the SMs, up to 16 ways
        block_m, warps, programs, most = max(8, 1 << (m - 1).bit_length()), 4, 2 * sm_count, 16
    else:
        block_m, warps, programs, most = (64, 4, sm_count, 8) if m < 128 else (128, 8, sm_count, 8)
    split = _split_k(programs, -(-n // 128) * -(-m // block_m), k // block_k, most)
    return HopperConfig(block_m, 128, block_k, 2, warps, split, w_first=m <= 64).as_matmul()


def gemm_config(m: int, n: int, k: int, group_size: int, gemv_layout: bool) -> MatmulConfig:
    """Tensor-core tiles for 16 < M < the dequantize threshold."""
    block_k = min(group_size, 64)
    block_m = 32 if m <= 32 else (64 if m <= 64 else 128)
    return MatmulConfig(block_m, 128, block_k, 1, 8 if block_m == 128 else 4, 3)


#: the M each tile entry was tuned at; a call uses the next one up (1024 and 4096: prefill)
M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
TableKey = tuple[str, int, int, int, int]  # layout, K, N, group size, M bucket


def m_bucket(m: int) -> int:
    return next((b for b in M_BUCKETS if m <= b), M_BUCKETS[-1])


@dataclass(frozen=True)
class TunedEntry:
    config: MatmulConfig  # the fused kernel's tile: the wgmma tile's where ``path`` is "wgmma"
    path: KernelPath | None  # for M > 16: which of the fused kernels or dequantize + cuBLAS won


@dataclass(frozen=True, eq=False)
class DispatchPlan:
    """How this library's linears run on one GPU: the thresholds between the paths, the tiles
    measured best on this chip (:mod:`awq_kernel_select.measured` reads them), how many SMs a grid
    is spread over, whether launches may use programmatic dependent launch (sm90+) and whether
    the wgmma tile runs (sm_90).

    :func:`~awq_kernel_select.select_kernel` builds it for the GPU it selects for
    (``Selection.plan``) and ``load_quantized`` hands it to every layer; the kernels never ask
    which GPU they are on. A plan decides each call shape once and remembers the answer."""

    policy: DispatchPolicy = DEFAULT_DISPATCH
    tiles: Mapping[TableKey, TunedEntry] = field(default_factory=dict)
    multiprocessors: int = 4  # off the GPU (the interpreter): small grids
    pdl_capable: bool = False
    wgmma_capable: bool = False  # sm_90: the wgmma path (kernels/hopper.py) can run
    gpu: str | None = None
    tiles_note: str = "heuristic tiles"
    crossover_tokens: int | None = None  # where the GEMM layout overtakes the GEMV layout, if measured
    _decided: dict[tuple[object, ...], tuple[KernelPath, MatmulConfig]] = field(
        default_factory=dict, init=False, repr=False)

    def with_policy(self, policy: DispatchPolicy) -> DispatchPlan:
        return replace(self, policy=policy)

    def forget(self) -> None:
        """Drop the decided call shapes, after ``tiles`` (a dict) was changed in place: the tuner
        does this to try tiles inside a compiled model without recompiling it."""
        self._decided.clear()

    def tuned_entry(self, layout: str, m: int, n: int, k: int, g: int, bf16: bool = False,
                    below: bool = True) -> TunedEntry | None:
        """The entry of M's bucket, else of the next bucket up in the same regime (M <= 16 or not),
        else for M > 256 (with ``below``) the bucket-256 entry: tables without prefill buckets
        serve all large M from it.

        The sweeps time fp16 x. With ``bf16`` x at M = 4 the four-token FMA tiles are passed over:
        their bf16 pair sums take ~40% more instructions per weight than fp16's, and on the H100
        the 16-row ``tl.dot`` tile of the next bucket was 9-10% faster (docs/kernels.md). At
        M = 3 the tile dots three tokens, a sixth fewer instructions, and bf16 keeps it."""
        bucket = m_bucket(m)
        for b in (*M_BUCKETS[M_BUCKETS.index(bucket):], *((256,) if m > 256 and below else ())):
            if (b <= 16) != (bucket <= 16):
                break
            found = self.tiles.get((layout, k, n, g, b))
            if found is not None and not (bf16 and found.config.block_m == 4 and m == 4):
                return found
        return None

    def config_for(self, path: KernelPath, layout: str, m: int, n: int, k: int, g: int,
                   bf16: bool = False) -> MatmulConfig:
        """The tuned configuration for this shape (``bf16``: for bf16 x) if the plan has one, else
        the heuristic. A table's wgmma tile serves the wgmma path only, and only it."""
        found = self.tuned_entry(layout, m, n, k, g, bf16)
        if found is not None:
            if found.path == "wgmma" or path == "wgmma":
                if found.path == path:
                    return found.config
            elif (path == "gemv") == (m_bucket(m) <= 16):
                return found.config
        if path == "wgmma":
            return wgmma_config(m, n, k, g, self.multiprocessors)
        if path == "gemv":
            return gemv_config(m, n, k, g, layout == "gemv", self.multiprocessors, bf16)
        return gemm_config(m, n, k, g, layout == "gemv")

    def decide(self, device: torch.device, layout: str, m: int, n: int, k: int, g: int,
               path: KernelPath | Literal["auto"] = "auto", bf16: bool = False) -> tuple[KernelPath, MatmulConfig]:
        """The path and tile configuration for one call shape (``bf16``: of bf16 x)."""
        key = (device.type, layout, m, n, k, g, path, bf16)
        found = self._decided.get(key)
        if found is not None:
            return found
        chosen = choose_path(m, device, self.policy) if path == "auto" else path
        if path == "auto" and chosen != "torch":
            # what this GPU measured for this shape decides: above M = 16 and below the prefill
            # buckets between the fused kernels and dequantize + cuBLAS; the wgmma tile wherever
            # it was measured at this M's bucket or the next one up (for M >= 1024 only there:
            # a tile timed at M = 256 says nothing of prefill)
            prefill = m >= self.policy.dequant_min_tokens * 4
            entry = self.tuned_entry(layout, m, n, k, g, bf16, below=not prefill)
            if entry is not None and entry.path is not None and (
                    entry.path == "wgmma" or chosen != "gemv" and not prefill):
                chosen = entry.path
        decided = (chosen, self.config_for(chosen if chosen in ("gemv", "wgmma") else "gemm", layout, m, n, k, g,
                                           bf16))
        if len(self._decided) >= 4096:
            self._decided.clear()
        self._decided[key] = decided
        return decided

    def describe(self) -> str:
        where = f" on {self.gpu}" if self.gpu else ""
        return f"{self.tiles_note}; {self.multiprocessors} SMs{where}"


#: The plan off the GPU (plain torch, or Triton's interpreter with small grids).
CPU_PLAN = DispatchPlan(tiles_note="no GPU: plain torch (or the interpreter's small grids)")

_planner: Callable[[torch.device], DispatchPlan] | None = None


def set_default_planner(planner: Callable[[torch.device], DispatchPlan]) -> None:
    """Who builds the plan of a CUDA device for calls that bring none (a module built by hand,
    a direct :func:`awq_linear`): :mod:`awq_kernel_select.measured` installs one that reads the
    measured facts of that device's GPU model, so the kernels need not know which GPU they are on."""
    global _planner
    _planner = planner


def default_plan(device: torch.device) -> DispatchPlan:
    if device.type != "cuda" or _planner is None:
        return CPU_PLAN
    return _planner(device)


def dequant_matmul(x: torch.Tensor, weights: PackedWeights, bias: torch.Tensor | None,
                   chunk_bytes: int, min_cols: int = 0) -> torch.Tensor:
    """``x @ W^T + bias`` by dequantizing ``W`` (Triton) and multiplying with cuBLAS, in bf16
    for bf16 ``x`` (whose values fp16 cannot hold), else in fp16.

    With ``chunk_bytes > 0`` the layer is done in chunks of output columns whose 16-bit weights
    take at most ``chunk_bytes``: one scratch buffer is dequantized into and multiplied from,
    chunk after chunk, so it stays in L2 and the weight never travels to DRAM and back.
    """
    K, N, g = weights.in_features, weights.out_features, weights.group_size
    gemv_layout = weights.layout == "gemv"
    dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float16
    x16 = x.to(dtype)
    b16 = None if bias is None else bias.to(dtype)
    cols = N if chunk_bytes <= 0 else max(128, chunk_bytes // (2 * K) // 128 * 128)
    if cols >= N or cols < min_cols:
        w = dequantize_triton(weights.qweight, weights.qzeros, weights.scales, gemv_layout=gemv_layout,
                              in_features=K, out_features=N, group_size=g, dtype=dtype)
        return torch.nn.functional.linear(x16, w if gemv_layout else w.t(), b16)
    out = torch.empty(x.shape[0], N, dtype=dtype, device=x.device)
    scratch = torch.empty(cols * K, dtype=dtype, device=x.device)
    for n0 in range(0, N, cols):
        n1 = min(N, n0 + cols)
        if gemv_layout:  # rows n0..n1 of W [N, K]
            w = dequantize_triton(weights.qweight[n0:n1], weights.qzeros[n0:n1], weights.scales[n0:n1],
                                  gemv_layout=True, in_features=K, out_features=n1 - n0, group_size=g,
                                  out=scratch[: (n1 - n0) * K].view(n1 - n0, K), dtype=dtype).t()
        else:  # columns n0..n1 of W^T [K, N]
            w = dequantize_triton(weights.qweight[:, n0 // 8:n1 // 8], weights.qzeros[:, n0 // 8:n1 // 8],
                                  weights.scales[:, n0:n1], gemv_layout=False, in_features=K,
                                  out_features=n1 - n0, group_size=g,
                                  out=scratch[: (n1 - n0) * K].view(K, n1 - n0), dtype=dtype)
        if b16 is None:  # written in place: cuBLAS takes the column slice's row stride
            torch.mm(x16, w, out=out[:, n0:n1])
        else:
            torch.addmm(b16[n0:n1], x16, w, out=out[:, n0:n1])
    return out


def awq_linear(
    x: torch.Tensor,
    weights: PackedWeights,
    bias: torch.Tensor | None = None,
    *,
    path: KernelPath | Literal["auto"] = "auto",
    plan: DispatchPlan | None = None,
    config: MatmulConfig | None = None,
    epilogue: Epilogue = "none",
) -> torch.Tensor:
    """``x [..., K] @ W^T + bias`` for packed weights of either layout, then ``epilogue``
    (``reference.Epilogue``); returns ``x.dtype``.

    ``path="auto"`` picks by the number of rows (see the module docstring); a named path is
    honoured as asked, and ``config`` overrides the tile choice (benchmarks, tuning). ``plan``:
    the GPU's :class:`DispatchPlan` (default: the one built for ``x``'s device).
    """
    return linear_with_replay(x, weights, bias, path=path, plan=plan, config=config, epilogue=epilogue)[0]


def linear_with_replay(
    x: torch.Tensor,
    weights: PackedWeights,
    bias: torch.Tensor | None = None,
    *,
    path: KernelPath | Literal["auto"] = "auto",
    plan: DispatchPlan | None = None,
    config: MatmulConfig | None = None,
    pdl: bool = False,
    epilogue: Epilogue = "none",
) -> tuple[torch.Tensor, Replay | None]:
    """:func:`awq_linear`, and for the fused paths a function ``x -> out`` that repeats the same
    launch for a new contiguous, 16-byte aligned input of the same shape and dtype with almost
    no Python in between, the output in its final shape ``[..., width]`` (what the modules and
    the operator keep per input shape in eager decode); None for the other paths.
    ``pdl``: the fused paths launch with programmatic dependent launch where the plan says the
    GPU has it (sm90+). ``epilogue``
    ``"silu_mul"`` halves the width: the GEMV layout's kernel makes it in its epilogue, the
    other paths in torch after the matmul."""
    if x.shape[-1] != weights.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {weights.in_features}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"input dtype {x.dtype} is not supported: use float16 or bfloat16")
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}: one of {', '.join(EPILOGUES)}")
    lead = x.shape[:-1]
    width = output_width(weights.out_features, epilogue)
    x2 = x.reshape(-1, weights.in_features)
    m = x2.shape[0]
    if m == 0:
        return x.new_zeros(*lead, width), None
    plan = default_plan(x.device) if plan is None else plan
    chosen, planned = plan.decide(x.device, weights.layout, m, weights.out_features, weights.in_features,
                                  weights.group_size, path, bf16=x.dtype == torch.bfloat16)
    if chosen == "wgmma":  # before the generic check: this path needs more than Triton
        if weights.layout != "gemv":
            raise ValueError("path 'wgmma' reads the GEMV layout's words; this layer is in the GEMM layout: "
                             "use path='gemm' or 'auto'")
        if not plan.wgmma_capable:
            where = f"this plan is for {plan.gpu}" if plan.gpu else f"the input is on {x.device}"
            raise ValueError(f"path 'wgmma' needs an sm_90 GPU (H100, H200); {where}: use path='gemm' or 'auto'")
    if chosen != "torch" and not triton_usable(x.device):
        raise RuntimeError(f"path {chosen!r} needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
    replay: Replay | None = None
    if chosen == "torch":
        out = reference_linear(x2, weights, bias, epilogue=epilogue)
    elif chosen == "dequant":
        out = apply_epilogue(dequant_matmul(x2, weights, bias, plan.policy.dequant_chunk_bytes,
                                            plan.policy.dequant_chunk_min_cols).to(x.dtype), epilogue)
    elif chosen == "wgmma":
        kept = x2.dtype in (torch.float16, torch.bfloat16)  # fp32 x goes through a copy: no kept launch
        out, launch_only = awq_hopper_matmul_with_replay(
            x2 if kept else x2.to(torch.float16), weights.qweight, weights.qzeros, weights.scales,
            weights.group_size, HopperConfig.from_matmul(config or planned), bias,
            out_shape=(*lead, weights.out_features))
        out = apply_epilogue(out.to(x.dtype), epilogue)
        if kept and launch_only is not None:  # the epilogue (if any) in torch after it
            wgmma_launch = launch_only
            replay = wgmma_launch if epilogue == "none" else lambda x_new: apply_epilogue(wgmma_launch(x_new), epilogue)
    else:
        in_kernel = weights.layout == "gemv" or epilogue == "none"  # the kernel makes the epilogue (if any)
        out, replay = awq_matmul_with_replay(x2, weights.qweight, weights.qzeros, weights.scales, bias,
                                             weights.layout == "gemv", weights.in_features,
                                             weights.out_features, weights.group_size, config or planned, None,
                                             pdl=(pdl or matmul.USE_PDL) and plan.pdl_capable,
                                             silu_mul=in_kernel and epilogue == "silu_mul",
                                             out_shape=(*lead, weights.out_features if not in_kernel else width))
        if not in_kernel:  # the GEMM layout's kernel has no epilogue: torch after it
            out = apply_epilogue(out, epilogue)
            launch_only = replay
            replay = None if launch_only is None else lambda x_new: apply_epilogue(launch_only(x_new), epilogue)
    return out.reshape(*lead, width), replay
