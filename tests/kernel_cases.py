"""What the kernel tests share: the device, the layer shapes (small and not powers of two in
the interpreter, Llama-sized on a GPU), random packed layers and the error measure."""

from __future__ import annotations

import torch

from awq_kernel_select import layouts as L

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
