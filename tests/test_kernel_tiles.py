"""Every family of tile configurations the kernels have, and the heuristic's tiles, against a
float64 reference (in the interpreter on the CPU: minutes, so marked slow; CI runs them). Apart
from tests/test_kernels.py so that the two files run on different test workers."""

from __future__ import annotations

import pytest
import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.kernels import awq_linear
from awq_kernel_select.kernels.dispatch import gemv_config
from awq_kernel_select.kernels.matmul import MatmulConfig

from kernel_cases import DEVICE, SHAPES, TOL, poison_allocator, random_packed, rel_err


@pytest.mark.slow  # every tile family in the interpreter: CI runs it; -m 'not slow' skips it
@pytest.mark.parametrize("layout", ["gemm", "gemv"])
def test_heuristic_tiles_run_and_match(layout: str) -> None:
    """The untuned heuristic (every M of the GEMV regime, group 32) gives tiles the kernel accepts
    and the right product."""
    k, n = SHAPES[1]
    packed = random_packed(k, n, 32, layout, seed=4)
    ref_w = L.dequantize(packed, torch.float64)
    for m in (1, 2, 3, 5, 16):
        cfg = gemv_config(m, n, k, 32, layout == "gemv", sm_count=4)
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        out = awq_linear(x, packed, path="gemv", config=cfg)
        assert rel_err(out, x.double() @ ref_w.t()) < TOL, f"M={m} {cfg}"


TILE_CONFIGS = [  # (layout, config): every family of tiles the kernels have
    ("gemv", MatmulConfig(1, 32, 64, 2)),  # FMA, one token per program, split-K
    ("gemv", MatmulConfig(1, 32, 64, 3, prefetch=True)),  # ... loading the next tile early
    ("gemv", MatmulConfig(2, 32, 128, 1)),  # FMA, tiles spanning two groups of 64
    ("gemv", MatmulConfig(4, 32, 64, 3, prefetch=True, interleave_k=True)),  # four tokens, words decoded once
    ("gemv", MatmulConfig(8, 32, 64, 1)),
    ("gemv", MatmulConfig(16, 32, 32, 2)),  # tl.dot
    ("gemv", MatmulConfig(16, 64, 64, 1, w_first=True)),  # tl.dot, W @ x^T
    ("gemv", MatmulConfig(16, 32, 32, 3, w_first=True, prefetch=True)),  # next tile early, uneven split-K
    ("gemv", MatmulConfig(1, 32, 64, 3, prefetch=True, interleave_k=True)),  # every 3rd K tile per split
    ("gemv", MatmulConfig(1, 32, 128, 2, interleave_k=True)),  # tiles of two groups, interleaved
    ("gemv", MatmulConfig(1, 64, 128, 3, prefetch=True)),  # tiles of two groups, next tile early
    ("gemv", MatmulConfig(2, 32, 64, 3, interleave_k=True)),
    ("gemv", MatmulConfig(2, 32, 64, 3, prefetch=True, interleave_k=True)),  # two tokens, next tile early
    ("gemv", MatmulConfig(2, 16, 512, 1)),  # all of a short K in one masked step (small models)
    ("gemv", MatmulConfig(16, 32, 32, 3, w_first=True, prefetch=True, interleave_k=True)),
    ("gemm", MatmulConfig(1, 64, 32, 2)),  # FMA
    ("gemm", MatmulConfig(16, 32, 64, 1)),  # tl.dot
    ("gemm", MatmulConfig(16, 32, 32, 3, prefetch=True)),  # next tile early, uneven split-K
    ("gemm", MatmulConfig(16, 64, 32, 2, w_first=True)),  # tl.dot, W^T @ x^T
]


@pytest.mark.slow  # every tile family in the interpreter: CI runs it; -m 'not slow' skips it
@pytest.mark.parametrize("layout,cfg", TILE_CONFIGS, ids=[f"{lay}-{c}" for lay, c in TILE_CONFIGS])
def test_tile_configurations(layout: str, cfg: MatmulConfig) -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, layout, seed=5)
    ref_w = L.dequantize(packed, torch.float64)
    for m in (1, 3, 8, 11):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        bias = torch.randn(n, device=DEVICE, dtype=torch.float16) if m % 2 else None
        poison_allocator(m * n)
        out = awq_linear(x, packed, bias, path="gemv", config=cfg)
        ref = x.double() @ ref_w.t() + (bias.double() if bias is not None else 0)
        assert rel_err(out, ref) < TOL, f"M={m}"


GATED_CONFIGS = [  # the epilogue after each kind of accumulation, with and without split-K
    ("gemv", MatmulConfig(1, 32, 64, 1)), ("gemv", MatmulConfig(1, 64, 64, 3, prefetch=True, interleave_k=True)),
    ("gemv", MatmulConfig(2, 32, 64, 2)), ("gemv", MatmulConfig(4, 32, 64, 2, prefetch=True)),
    ("gemv", MatmulConfig(8, 32, 64, 1)),
    ("gemv", MatmulConfig(16, 32, 32, 1, w_first=True)), ("gemv", MatmulConfig(16, 32, 32, 2)),
    ("gemm", MatmulConfig(1, 64, 32, 2)),  # no epilogue in this kernel: torch after it
]


@pytest.mark.slow  # every tile family in the interpreter: CI runs it; -m 'not slow' skips it
@pytest.mark.parametrize("layout,cfg", GATED_CONFIGS, ids=[f"{lay}-{c}" for lay, c in GATED_CONFIGS])
def test_silu_mul_epilogue_matches_float64(layout: str, cfg: MatmulConfig) -> None:
    """A layer of gate and up rows in turn: ``silu(gate) * up``, half as wide, in every tile kind."""
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, layout, seed=21)
    w = L.dequantize(packed, torch.float64)
    for m in (1, 3, 11):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        bias = torch.randn(n, device=DEVICE, dtype=torch.float16) if m % 2 else None
        poison_allocator(m * n // 2)
        out = awq_linear(x, packed, bias, path="gemv", config=cfg, epilogue="silu_mul")
        full = x.double() @ w.t() + (bias.double() if bias is not None else 0)
        ref = torch.nn.functional.silu(full[:, 0::2]) * full[:, 1::2]
        assert out.shape == (m, n // 2)
        assert rel_err(out, ref) < TOL, f"M={m}"
