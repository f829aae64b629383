"""Packed layouts: bit-exact against AutoAWQ's own packers, lossless conversion both ways."""

from __future__ import annotations

import pytest
import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.modules import AKSLinearGEMM, AKSLinearGEMV


def autoawq_quantized_linear(k: int, n: int, g: int, seed: int):
    from awq.quantize.quantizer import AwqQuantizer

    torch.manual_seed(seed)
    linear = torch.nn.Linear(k, n, bias=True).half().requires_grad_(False)
    q = AwqQuantizer.__new__(AwqQuantizer)
    q.group_size, q.zero_point, q.w_bit = g, True, 4
    w, scales, zeros = q.pseudo_quantize_tensor(linear.weight.data)
    linear.weight.data = w
    return linear, scales, zeros


SHAPES = [(256, 64, 128), (512, 64, 64), (384, 32, 32), (11008, 96, 32), (13824, 64, 128)]


@pytest.mark.parametrize("k,n,g", SHAPES)
def test_conversion_is_bit_exact_against_autoawq_from_linear(k: int, n: int, g: int) -> None:
    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV
    from awq.utils.packing_utils import dequantize_gemm

    linear, scales, zeros = autoawq_quantized_linear(k, n, g, seed=k + n)
    gemm = WQLinear_GEMM.from_linear(linear, 4, g, scales=scales.t().contiguous(), zeros=zeros.t().contiguous())
    gemv = WQLinear_GEMV.from_linear(linear, 4, g, scales=scales, zeros=zeros)
    as_gemm = L.PackedWeights("gemm", gemm.qweight, gemm.qzeros, gemm.scales, k, n, g)
    as_gemv = L.PackedWeights("gemv", gemv.qweight, gemv.qzeros, gemv.scales, k, n, g)
    converted, back = L.gemm_to_gemv(as_gemm), L.gemv_to_gemm(as_gemv)
    for name in ("qweight", "qzeros", "scales"):
        assert torch.equal(getattr(converted, name), getattr(gemv, name)), name
        assert torch.equal(getattr(back, name), getattr(gemm, name)), name
    reference = dequantize_gemm(gemm.qweight, gemm.qzeros, gemm.scales, 4, g)  # AutoAWQ's [K, N]
    assert torch.equal(L.dequantize(as_gemm).t(), reference)
    assert torch.equal(L.dequantize(as_gemv), L.dequantize(as_gemm))
    assert torch.equal(L.dequantize(as_gemm), linear.weight.data)  # the weights were on the grid


@pytest.mark.parametrize("ours,theirs_name", [(AKSLinearGEMM, "WQLinear_GEMM"), (AKSLinearGEMV, "WQLinear_GEMV")])
def test_modules_are_drop_ins(ours, theirs_name: str) -> None:
    import awq.modules.linear as awq_linear

    theirs = getattr(awq_linear, theirs_name)
    linear, scales, zeros = autoawq_quantized_linear(512, 64, 64, seed=1)
    s, z = (scales.t().contiguous(), zeros.t().contiguous()) if ours is AKSLinearGEMM else (scales, zeros)
    a = theirs.from_linear(linear, 4, 64, scales=s, zeros=z).state_dict()
    b = ours.from_linear(linear, 4, 64, scales=s, zeros=z).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    empty = ours.from_linear(linear, 4, 64, init_only=True)
    empty.load_state_dict(a)  # an AutoAWQ state dict loads as is
    x = torch.randn(2, 3, 512, dtype=torch.float16)
    ref = x.double() @ linear.weight.double().t() + linear.bias.double()
    out = empty(x)
    assert out.shape == (2, 3, 64) and float((out.double() - ref).norm() / ref.norm()) < 1e-3


def test_pack_unpack_round_trip_and_ranges() -> None:
    torch.manual_seed(0)
    q = torch.randint(0, 16, (24, 64), dtype=torch.int32)
    for order in (L.AWQ_ORDER, L.SEQUENTIAL_ORDER):
        assert torch.equal(L.unpack_int4(L.pack_int4(q, order), order), q)
    with pytest.raises(ValueError, match="0..15"):
        L.pack_int4(q + 1, L.AWQ_ORDER)
    with pytest.raises(ValueError, match="multiple of 8"):
        L.pack_int4(q[:, :60], L.AWQ_ORDER)


def test_gemm_nibble_order_is_awqs() -> None:
    row = torch.arange(8, dtype=torch.int32)[None, :]  # columns 0..7 hold values 0..7
    word = int(L.pack_int4(row, L.AWQ_ORDER)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]


def test_shape_errors_name_the_buffer() -> None:
    p = L.pack(*L.quantize_rtn(torch.randn(64, 256), 64), 64, "gemv")
    with pytest.raises(ValueError, match=r"qzeros has shape \(64, 1\), the gemv layout needs \(64, 2\)"):
        L.PackedWeights("gemv", p.qweight, p.qzeros[:, :1], p.scales, 256, 64, 64)
    with pytest.raises(ValueError, match="group sizes 32, 64"):
        L.calculate_zeros_width(256, 16)
    with pytest.raises(ValueError, match="only 4-bit"):
        AKSLinearGEMM(8, 64, 256, 64, False)


def test_rtn_matches_autoawqs_grid() -> None:
    torch.manual_seed(2)
    w = torch.randn(64, 256)
    q, z, s = L.quantize_rtn(w, 64)
    assert int(q.min()) >= 0 and int(q.max()) <= 15
    err = (L.dequantize(L.pack(q, z, s, 64, "gemm"), torch.float64) - w.double()).abs()
    assert float(err.max()) <= float(s.double().max()) * 0.51  # at most half a step (+ fp16 rounding)
