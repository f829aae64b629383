"""The kernels we compare with, each built from the same 4-bit integers, scales and zeros.

Every builder takes ``(intweight [N, K] int32, zeros [N, K/G] int32, scales [N, K/G] fp16, G,
dtype)`` on the GPU, ``dtype`` being the activations' (fp16 or bf16), and returns
``op(x [M, K] dtype) -> [M, N]``, or raises ``Unavailable`` with the reason (printed in the table,
never hidden).
"""

from __future__ import annotations

from typing import Callable

import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.kernels import awq_linear, matmul

Op = Callable[[torch.Tensor], torch.Tensor]


class Unavailable(RuntimeError):
    pass


def dense_linear(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, g: int, dtype: torch.dtype) -> Op:
    """cuBLAS ``F.linear`` on the dequantized weight in the activations' dtype."""
    packed = L.pack(q, z, s, g, "gemm")
    w = L.dequantize(packed, dtype).contiguous()  # [N, K], the same function as ours
    return lambda x: torch.nn.functional.linear(x, w)


def ours(layout: str, path: str = "auto", pdl: bool = False
         ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Op]:
    """This library's ``awq_linear``; ``pdl``: launched with programmatic dependent launch
    (``AWQ_KERNEL_SELECT_PDL=1``)."""
    def build(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, g: int, dtype: torch.dtype) -> Op:
        packed = L.pack(q, z, s, g, layout)

        def op(x: torch.Tensor) -> torch.Tensor:
            default, matmul.USE_PDL = matmul.USE_PDL, pdl
            try:
                return awq_linear(x, packed, None, path=path)  # type: ignore[arg-type]
            finally:
                matmul.USE_PDL = default

        return op

    return build


def tinygemm(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, g: int, dtype: torch.dtype) -> Op:
    """torch's int4 tinygemm (bf16 only: fp16 input is converted, as a user would have to):
    w = (q - 8) * scale + zero, so zero = (8 - z) * s."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        raise Unavailable("torch has no _weight_int4pack_mm")
    if torch.cuda.get_device_capability() < (8, 0):
        raise Unavailable("tinygemm needs sm80+")
    k = q.shape[1]
    inner_k_tiles = next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)  # K in super-tiles of 16 x t
    if inner_k_tiles is None:
        raise Unavailable(f"tinygemm needs K divisible by 32, got {k}")
    w_uint8 = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(w_uint8.contiguous(), inner_k_tiles)
    scale = s.float()
    zero = (8 - z).float() * scale
    scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()

    def op(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16), packed, g, scales_and_zeros)  # bf16 out

    return op


def gemlite(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, g: int, dtype: torch.dtype) -> Op:
    try:
        from gemlite.helper import A16Wn
    except Exception as exc:  # not installed, or its Triton too old
        raise Unavailable(f"gemlite not importable: {type(exc).__name__}: {exc}") from exc
    layer = A16Wn(device=str(q.device), dtype=dtype).from_weights(
        W_q=q.to(torch.uint8), scales=s.to(dtype), zeros=z.to(dtype), W_nbits=4, group_size=g
    )
    return lambda x: layer(x)


def autoawq(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, g: int, dtype: torch.dtype) -> Op:
    """AutoAWQ's WQLinear_GEMM as it runs on this stack (awq_ext, else its Triton GEMM).
    AutoAWQ computes in fp16: bf16 input goes through fp16 and back, as it does in a bf16 model."""
    try:
        from awq.modules.linear.gemm import WQLinear_GEMM
    except Exception as exc:
        raise Unavailable(f"autoawq not importable: {type(exc).__name__}: {exc}") from exc
    n, k = q.shape
    packed = L.pack(q, z, s, g, "gemm")
    layer = WQLinear_GEMM(4, g, k, n, False, q.device)
    layer.qweight, layer.qzeros, layer.scales = packed.qweight, packed.qzeros, packed.scales
    # 3-D input, as in a model: AutoAWQ's "tokens >= 1024" test reads x.shape[0] * x.shape[1]
    return lambda x: layer(x.unsqueeze(0).half()).squeeze(0).to(dtype)


def autoawq_path_name() -> str:
    try:
        from awq.modules.linear import gemm

        return "awq_ext" if gemm.awq_ext is not None else ("triton" if gemm.TRITON_AVAILABLE else "torch")
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"
