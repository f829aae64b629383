"""Per-call dispatch: from the number of tokens M, pick the path and its tile configuration.

=========  ===========================================  =====================================
path       what runs                                    used for (defaults)
=========  ===========================================  =====================================
gemv       fused kernel, split-K, FMA (M=1) or 16-row   M <= 16 (decode)
           ``tl.dot`` (M=2..16)
gemm       fused kernel, ``tl.dot`` tiles, no split-K   16 < M < 256 (batched decode)
dequant    Triton dequantize to fp16, then cuBLAS       M >= 256 (prefill)
torch      plain torch dequantize + matmul              no GPU (and no ``TRITON_INTERPRET``)
=========  ===========================================  =====================================

The thresholds live in :class:`DispatchPolicy`. Where ``kernels/tuned/<gpu>.json`` has an
entry for the shape (from ``benchmarks/kernels.py --sweep``), its tile configuration is used,
and for 16 < M < 1024 its measured choice between the fused kernel and dequantize + cuBLAS.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..layouts import PackedWeights
from .dequant import dequantize_triton
from .matmul import MatmulConfig, awq_matmul
from .reference import reference_linear

KernelPath = Literal["gemv", "gemm", "dequant", "torch"]
PATHS: tuple[KernelPath, ...] = ("gemv", "gemm", "dequant", "torch")


@dataclass(frozen=True)
class DispatchPolicy:
    gemv_max_tokens: int = 16  # M <= this: the GEMV regime
    dequant_min_tokens: int = 256  # M >= this: dequantize + cuBLAS (a tuned entry may say otherwise)

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
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def choose_path(m: int, device: torch.device, policy: DispatchPolicy = DEFAULT_DISPATCH) -> KernelPath:
    return policy.path_for(m) if triton_usable(device) else "torch"


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 4  # the interpreter: keep grids small


def _pow2_floor(v: int) -> int:
    return 1 << (max(v, 1).bit_length() - 1)


def gemv_config(m: int, n: int, k: int, group_size: int, gemv_layout: bool, sm_count: int) -> MatmulConfig:
    """Tiles for M <= 16: enough programs (about 4 per SM) that every SM streams weights."""
    if m == 1:
        block_m, block_n, warps = 1, (64 if gemv_layout else 128), 4
        block_k = min(group_size, 128)
    else:
        block_m, block_n, warps = 16, (64 if gemv_layout else 128), 4
        block_k = min(group_size, 128)
    tiles = -(-n // block_n) * -(-m // block_m)
    k_tiles = -(-k // block_k)
    split = _pow2_floor(max(1, (4 * sm_count) // tiles))
    split = min(split, _pow2_floor(k_tiles), 16)
    return MatmulConfig(block_m, block_n, block_k, split, warps, 3)


def gemm_config(m: int, n: int, k: int, group_size: int, gemv_layout: bool) -> MatmulConfig:
    """Tensor-core tiles for 16 < M < the dequantize threshold."""
    block_k = min(group_size, 64)
    block_m = 32 if m <= 32 else (64 if m <= 64 else 128)
    return MatmulConfig(block_m, 128, block_k, 1, 8 if block_m == 128 else 4, 3)


#: Tile configurations measured best per GPU by ``benchmarks/kernels.py --sweep`` (shipped
#: JSON, one file per GPU model). ``AWQ_KERNEL_SELECT_TUNED`` names another file.
TUNED_DIR = Path(__file__).parent / "tuned"
M_BUCKETS = (1, 2, 4, 16, 64, 256)  # the M each entry was tuned at; a call uses the next one up


def m_bucket(m: int) -> int:
    return next((b for b in M_BUCKETS if m <= b), M_BUCKETS[-1])


@dataclass(frozen=True)
class TunedEntry:
    config: MatmulConfig
    path: KernelPath | None  # for M > 16: whether the fused kernel or dequantize + cuBLAS won


@functools.lru_cache(maxsize=None)
def _tuned_table(device_name: str) -> dict[tuple[str, int, int, int, int], TunedEntry]:
    custom = os.environ.get("AWQ_KERNEL_SELECT_TUNED")  # files separated by os.pathsep; later wins
    files = [Path(f) for f in custom.split(os.pathsep) if f] if custom else sorted(TUNED_DIR.glob("*.json"))
    table: dict[tuple[str, int, int, int, int], TunedEntry] = {}
    for path in files:
        data = json.loads(path.read_text())
        if data.get("gpu") != device_name:
            continue
        for e in data["entries"]:
            table[(e["layout"], e["K"], e["N"], e["G"], e["M"])] = TunedEntry(MatmulConfig(**e["config"]), e.get("path"))
    return table


def tuned_entry(device: torch.device, layout: str, m: int, n: int, k: int, g: int) -> TunedEntry | None:
    if device.type != "cuda":
        return None
    return _tuned_table(torch.cuda.get_device_name(device)).get((layout, k, n, g, m_bucket(m)))


def pick_config(device: torch.device, path: KernelPath, layout: str, m: int, n: int, k: int, g: int) -> MatmulConfig:
    """The tuned configuration for this GPU and shape if there is one, else the heuristic."""
    found = tuned_entry(device, layout, m, n, k, g)
    if found is not None and (path == "gemv") == (m_bucket(m) <= 16):
        return found.config
    if path == "gemv":
        return gemv_config(m, n, k, g, layout == "gemv", _sm_count(device))
    return gemm_config(m, n, k, g, layout == "gemv")


@functools.lru_cache(maxsize=4096)
def plan(device: torch.device, layout: str, m: int, n: int, k: int, g: int,
         path: KernelPath | Literal["auto"], policy: DispatchPolicy) -> tuple[KernelPath, MatmulConfig]:
    """The path and tile configuration for one call shape (cached: decode calls it per layer)."""
    chosen = choose_path(m, device, policy) if path == "auto" else path
    if path == "auto" and chosen in ("gemm", "dequant") and m < policy.dequant_min_tokens * 4:
        # between the regimes, what this GPU measured for this shape decides
        found = tuned_entry(device, layout, m, n, k, g)
        if found is not None and found.path is not None:
            chosen = found.path
    config = pick_config(device, "gemv" if chosen == "gemv" else "gemm", layout, m, n, k, g)
    return chosen, config


def awq_linear(
    x: torch.Tensor,
    weights: PackedWeights,
    bias: torch.Tensor | None = None,
    *,
    path: KernelPath | Literal["auto"] = "auto",
    policy: DispatchPolicy = DEFAULT_DISPATCH,
    config: MatmulConfig | None = None,
) -> torch.Tensor:
    """``x [..., K] @ W^T + bias`` for packed weights of either layout; returns ``x.dtype``.

    ``path="auto"`` picks by the number of rows (see the module docstring); a named path is
    honoured as asked, and ``config`` overrides the tile choice (benchmarks, tuning).
    """
    if x.shape[-1] != weights.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {weights.in_features}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"input dtype {x.dtype} is not supported: use float16 or bfloat16")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weights.in_features)
    m = x2.shape[0]
    if m == 0:
        return x.new_zeros(*lead, weights.out_features)
    chosen, planned = plan(x.device, weights.layout, m, weights.out_features, weights.in_features,
                           weights.group_size, path, policy)
    if chosen != "torch" and not triton_usable(x.device):
        raise RuntimeError(f"path {chosen!r} needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
    gemv_layout = weights.layout == "gemv"
    common = dict(gemv_layout=gemv_layout, in_features=weights.in_features,
                  out_features=weights.out_features, group_size=weights.group_size)
    if chosen == "torch":
        out = reference_linear(x2, weights, bias)
    elif chosen == "dequant":
        w = dequantize_triton(weights.qweight, weights.qzeros, weights.scales, **common)  # type: ignore[arg-type]
        w = w if gemv_layout else w.t()
        out = torch.nn.functional.linear(x2.to(torch.float16), w, None if bias is None else bias.to(torch.float16))
        out = out.to(x.dtype)
    else:
        out = awq_matmul(x2, weights.qweight, weights.qzeros, weights.scales, bias,
                         config=config or planned, **common)  # type: ignore[arg-type]
    return out.reshape(*lead, weights.out_features)
