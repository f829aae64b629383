"""Kernels against a float64 reference: both layouts, group sizes 32/64/128, every path.

On the CPU (CI) the Triton kernels run under TRITON_INTERPRET=1 at small shapes whose sizes are
not powers of two; on a GPU the same tests run at the full shapes of Llama-2 and Llama-3 layers.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.kernels import awq_linear
from awq_kernel_select.kernels.dispatch import DispatchPolicy, choose_path
from awq_kernel_select.kernels.matmul import _WORKSPACES, MatmulConfig

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
SHAPES = [(4096, 11008), (11008, 4096), (13824, 5120), (5120, 14336)] if GPU else [(384, 104), (640, 200)]
MS = [1, 2, 7, 16, 17, 100, 1024, 4096] if GPU else [1, 3, 16, 17, 40]
TOL = 1e-3


def random_packed(k: int, n: int, g: int, layout: str, seed: int) -> L.PackedWeights:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    w = torch.randn(n, k, generator=gen, device=DEVICE) * 0.05
    return L.pack(*L.quantize_rtn(w, g), g, layout)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "non-finite output (unwritten or overflowed elements)"
    return float((out.double() - ref).norm() / ref.norm())


def poison_allocator(numel: int) -> None:
    """Leave NaNs where the next allocation of this size will land (unwritten output shows)."""
    if GPU:
        junk = torch.full((numel,), float("nan"), device=DEVICE, dtype=torch.float16)
        del junk


CASES = [
    (k, n, g, layout)
    for (k, n), g, layout in itertools.product(SHAPES, (32, 64, 128), ("gemm", "gemv"))
    if k % g == 0
]


@pytest.mark.parametrize("k,n,g,layout", CASES)
def test_auto_dispatch_matches_float64(k: int, n: int, g: int, layout: str) -> None:
    packed = random_packed(k, n, g, layout, seed=k + n + g)
    ref_w = L.dequantize(packed, torch.float64)
    for i, m in enumerate(MS):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        bias = torch.randn(n, device=DEVICE, dtype=torch.float16) if i % 2 else None
        poison_allocator(m * n)
        out = awq_linear(x, packed, bias)
        ref = x.double() @ ref_w.t() + (bias.double() if bias is not None else 0)
        assert out.shape == (m, n) and out.dtype == torch.float16
        assert rel_err(out, ref) < TOL, f"M={m}"


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
@pytest.mark.parametrize("path", ["gemv", "gemm", "dequant", "torch"])
def test_every_path_on_both_layouts(layout: str, path: str) -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, layout, seed=7)
    ref_w = L.dequantize(packed, torch.float64)
    for m in (1, 5, 33):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        bias = torch.randn(n, device=DEVICE, dtype=torch.float16)
        out = awq_linear(x, packed, bias, path=path)  # type: ignore[arg-type]
        assert rel_err(out, x.double() @ ref_w.t() + bias.double()) < TOL, f"path={path} M={m}"


def test_three_d_inputs_and_bf16() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 128 if k % 128 == 0 else 64, "gemm", seed=3)
    ref_w = L.dequantize(packed, torch.float64)
    x = torch.randn(2, 3, k, device=DEVICE, dtype=torch.float16)
    out = awq_linear(x, packed)
    assert out.shape == (2, 3, n)
    assert rel_err(out, x.double() @ ref_w.t()) < TOL
    xb = torch.randn(1, 4, k, device=DEVICE, dtype=torch.bfloat16)
    outb = awq_linear(xb, packed)
    assert outb.dtype == torch.bfloat16
    # bf16 output rounding alone is 2^-9 relative: the bound is bf16's, not fp16's
    assert rel_err(outb, xb.double() @ ref_w.t()) < 1e-2


def test_split_k_leaves_its_workspace_clean() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemv", seed=11)
    ref_w = L.dequantize(packed, torch.float64)
    cfg = MatmulConfig(block_m=1, block_n=64, block_k=64, split_k=4)
    for _ in range(3):  # a dirty workspace would show in the second and third results
        x = torch.randn(1, k, device=DEVICE, dtype=torch.float16)
        out = awq_linear(x, packed, path="gemv", config=cfg)
        assert rel_err(out, x.double() @ ref_w.t()) < TOL
    for workspace, tickets in _WORKSPACES.values():
        assert workspace.abs().sum().item() == 0 and tickets.abs().sum().item() == 0


def test_dispatch_thresholds() -> None:
    device = torch.device("cuda") if GPU else torch.device("cpu")
    policy = DispatchPolicy(gemv_max_tokens=8, dequant_min_tokens=512)
    assert [choose_path(m, device, policy) for m in (1, 8, 9, 511, 512)] == ["gemv", "gemv", "gemm", "gemm", "dequant"]


def test_wrong_input_width_is_a_clear_error() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemm", seed=1)
    with pytest.raises(ValueError, match=f"expects {k}"):
        awq_linear(torch.randn(1, k + 8, device=DEVICE, dtype=torch.float16), packed)
    with pytest.raises(ValueError, match="must divide group_size"):
        awq_linear(torch.randn(1, k, device=DEVICE, dtype=torch.float16), packed, path="gemv",
                   config=MatmulConfig(1, 64, 128, 1))
