"""AutoAWQ's packed 4-bit layouts: exact pack, unpack, dequantize and lossless conversion.

Notation: ``K = in_features``, ``N = out_features``, ``G = group_size``; ``q`` are the 4-bit
integers (0..15), ``z`` the 4-bit zero points, ``s`` the fp16 scales, and the weight is
``W[n, k] = (q[n, k] - z[n, k // G]) * s[n, k // G]`` (``nn.Linear.weight`` orientation).

GEMM layout (``version="gemm"``, ``WQLinear_GEMM``)
    ``qweight``  int32 ``[K, N / 8]``: word ``[k, j]`` holds ``q[8j + ORDER[i], k]`` in bits
                 ``4i .. 4i+3``, with the interleaved ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``
                 (the order that lets CUDA kernels turn two nibbles into two fp16 at once).
    ``qzeros``   int32 ``[K / G, N / 8]``, packed like ``qweight``.
    ``scales``   fp16 ``[K / G, N]``.

GEMV layout (``version="gemv"``, ``WQLinear_GEMV``)
    ``qweight``  int32 ``[N, K / 8]``: word ``[n, j]`` holds ``q[n, 8j + i]`` in bits ``4i ..``
                 (sequential order).
    ``qzeros``   int32 ``[N, Z]`` with ``Z = calculate_zeros_width(K, G)``: word ``[n, j]``
                 holds ``z[n, 8j + i]`` in bits ``4i ..``; words past ``K / G`` groups are 0.
    ``scales``   fp16 ``[N, 8 * Z]``: ``s[n, g]`` for ``g < K / G``, then zeros (padding).

The conversion functions move the same integers and the same fp16 scales between the two, so
a GEMM checkpoint converted to GEMV and back is bit-identical, and both dequantize to the same
weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: the packed layouts AutoAWQ writes (its checkpoints' ``version``); this library reads gemm and gemv
CHECKPOINT_VERSIONS = ("gemm", "gemv", "gemv_fast", "marlin")

PACK = 8  # 4-bit values per int32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a GEMM word holds column 8j + AWQ_ORDER[i]
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column 8j + c sits in nibble AWQ_REVERSE_ORDER[c]
SEQUENTIAL_ORDER = (0, 1, 2, 3, 4, 5, 6, 7)


def calculate_zeros_width(in_features: int, group_size: int = 128, pack_num: int = PACK) -> int:
    """AutoAWQ's width (in int32 words) of a GEMV ``qzeros`` row (awq/modules/linear/gemv.py)."""
    if group_size >= 128:
        multiplier = 1
    elif group_size == 64:
        multiplier = 2
    elif group_size == 32:
        multiplier = 4
    else:
        raise ValueError(f"the GEMV layout supports group sizes 32, 64 and >= 128, not {group_size}")
    base = -(-(in_features // group_size) // pack_num)
    return -(-base // multiplier) * multiplier


@dataclass(frozen=True)
class PackedWeights:
    """The three buffers of one quantized linear layer, with the facts needed to read them."""

    layout: str  # "gemm" or "gemv"
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    in_features: int
    out_features: int
    group_size: int

    def __post_init__(self) -> None:
        validate_buffers(self.layout, self.qweight, self.qzeros, self.scales,
                         self.in_features, self.out_features, self.group_size)


def expected_shapes(layout: str, in_features: int, out_features: int, group_size: int) -> dict[str, tuple[int, int]]:
    """The buffer shapes AutoAWQ writes for a layer (used to validate checkpoints)."""
    k, n, g = in_features, out_features, group_size
    if layout == "gemm":
        return {"qweight": (k, n // PACK), "qzeros": (k // g, n // PACK), "scales": (k // g, n)}
    if layout == "gemv":
        z = calculate_zeros_width(k, g)
        return {"qweight": (n, k // PACK), "qzeros": (n, z), "scales": (n, z * PACK)}
    raise ValueError(f"unknown layout {layout!r}: expected 'gemm' or 'gemv'")


def validate_buffers(layout: str, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                     in_features: int, out_features: int, group_size: int, where: str = "") -> None:
    """Raise ``ValueError`` naming the buffer whose shape or dtype is wrong."""
    if in_features % group_size or out_features % PACK or in_features % PACK:
        raise ValueError(
            f"{where}in_features={in_features} must be a multiple of group_size={group_size} and of 8,"
            f" out_features={out_features} a multiple of 8"
        )
    expected = expected_shapes(layout, in_features, out_features, group_size)
    for name, tensor, dtype in (("qweight", qweight, torch.int32), ("qzeros", qzeros, torch.int32), ("scales", scales, None)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{where}{name} has shape {tuple(tensor.shape)}, the {layout} layout needs {expected[name]}"
                f" (in_features={in_features}, out_features={out_features}, group_size={group_size})"
            )
        if dtype is not None and tensor.dtype != dtype:
            raise ValueError(f"{where}{name} has dtype {tensor.dtype}, expected {dtype}")
    if not scales.is_floating_point():
        raise ValueError(f"{where}scales has dtype {scales.dtype}, expected a float type (fp16)")


# --- packing primitives (along the last dimension) --------------------------------------------


def pack_int4(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Pack ``[..., 8m]`` integers in 0..15 into ``[..., m]`` int32, nibble i <- column order[i]."""
    if values.shape[-1] % PACK:
        raise ValueError(f"last dimension {values.shape[-1]} is not a multiple of 8")
    v = values.to(torch.int32).reshape(*values.shape[:-1], -1, PACK)
    if int(v.min()) < 0 or int(v.max()) > 15:
        raise ValueError("4-bit values must lie in 0..15")
    packed = torch.zeros(v.shape[:-1], dtype=torch.int32, device=v.device)
    for i, column in enumerate(order):
        packed |= v[..., column] << (4 * i)  # int32 shifts wrap for nibble 7, as in AutoAWQ
    return packed


def unpack_int4(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``[..., m]`` int32 to ``[..., 8m]`` int32 in 0..15."""
    out = torch.empty(*packed.shape, PACK, dtype=torch.int32, device=packed.device)
    for i, column in enumerate(order):
        out[..., column] = (packed >> (4 * i)) & 0xF
    return out.reshape(*packed.shape[:-1], -1)


# --- whole layouts ------------------------------------------------------------------------------


def pack_gemm(intweight: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``intweight [N, K]`` and ``zeros [N, K/G]`` (linear orientation) -> GEMM qweight, qzeros."""
    return pack_int4(intweight.t(), AWQ_ORDER), pack_int4(zeros.t(), AWQ_ORDER)


def unpack_gemm(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GEMM qweight, qzeros -> ``intweight [N, K]``, ``zeros [N, K/G]``."""
    return unpack_int4(qweight, AWQ_ORDER).t(), unpack_int4(qzeros, AWQ_ORDER).t()


def pack_gemv(intweight: torch.Tensor, zeros: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``intweight [N, K]``, ``zeros [N, K/G]`` -> GEMV qweight ``[N, K/8]``, qzeros ``[N, Z]``."""
    n, k = intweight.shape
    width = calculate_zeros_width(k, group_size)
    padded = torch.zeros(n, width * PACK, dtype=torch.int32, device=zeros.device)
    padded[:, : zeros.shape[1]] = zeros
    return pack_int4(intweight, SEQUENTIAL_ORDER), pack_int4(padded, SEQUENTIAL_ORDER)


def unpack_gemv(qweight: torch.Tensor, qzeros: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GEMV qweight, qzeros -> ``intweight [N, K]``, ``zeros [N, K/G]`` (padding dropped)."""
    intweight = unpack_int4(qweight, SEQUENTIAL_ORDER)
    groups = intweight.shape[1] // group_size
    return intweight, unpack_int4(qzeros, SEQUENTIAL_ORDER)[:, :groups]


def gemv_scales(scales_gemm: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """GEMM scales ``[K/G, N]`` -> GEMV scales ``[N, 8Z]`` (zero padded)."""
    width = calculate_zeros_width(in_features, group_size) * PACK
    out = torch.zeros(scales_gemm.shape[1], width, dtype=scales_gemm.dtype, device=scales_gemm.device)
    out[:, : scales_gemm.shape[0]] = scales_gemm.t()
    return out


def gemm_to_gemv(w: PackedWeights) -> PackedWeights:
    """Convert GEMM buffers to GEMV buffers, bit for bit what ``WQLinear_GEMV.from_linear`` writes."""
    if w.layout != "gemm":
        raise ValueError(f"expected gemm buffers, got {w.layout}")
    intweight, zeros = unpack_gemm(w.qweight, w.qzeros)
    qweight, qzeros = pack_gemv(intweight, zeros, w.group_size)
    scales = gemv_scales(w.scales, w.in_features, w.group_size)
    return PackedWeights("gemv", qweight, qzeros, scales, w.in_features, w.out_features, w.group_size)


def gemv_to_gemm(w: PackedWeights) -> PackedWeights:
    """Convert GEMV buffers to GEMM buffers (the padding of the GEMV layout is dropped)."""
    if w.layout != "gemv":
        raise ValueError(f"expected gemv buffers, got {w.layout}")
    intweight, zeros = unpack_gemv(w.qweight, w.qzeros, w.group_size)
    qweight, qzeros = pack_gemm(intweight, zeros)
    groups = w.in_features // w.group_size
    scales = w.scales[:, :groups].t().contiguous()
    return PackedWeights("gemm", qweight, qzeros, scales, w.in_features, w.out_features, w.group_size)


def convert(w: PackedWeights, layout: str) -> PackedWeights:
    """Return ``w`` in ``layout`` ("gemm" or "gemv"), converting only when needed."""
    if w.layout == layout:
        return w
    if (w.layout, layout) == ("gemm", "gemv"):
        return gemm_to_gemv(w)
    if (w.layout, layout) == ("gemv", "gemm"):
        return gemv_to_gemm(w)
    raise ValueError(f"no lossless conversion from {w.layout} to {layout}")


def _check_joinable(parts: list[PackedWeights]) -> PackedWeights:
    """The first of ``parts``, after checking that all share their input, layout and group size."""
    first = parts[0]
    for part in parts[1:]:
        if (part.layout, part.in_features, part.group_size) != (first.layout, first.in_features, first.group_size):
            raise ValueError(f"cannot join a {part.layout} layer of {part.in_features} inputs, group "
                             f"{part.group_size} with a {first.layout} layer of {first.in_features}, group "
                             f"{first.group_size}")
    return first


def concat_out_features(parts: list[PackedWeights]) -> PackedWeights:
    """One layer whose output is the outputs of ``parts`` side by side (same input, layout and
    group size): the buffers are concatenated along N, which both layouts store per column
    (GEMM: the last dimension, GEMV: the first)."""
    first = _check_joinable(parts)
    dim = 1 if first.layout == "gemm" else 0
    qweight, qzeros, scales = (torch.cat([getattr(p, name) for p in parts], dim=dim)
                               for name in ("qweight", "qzeros", "scales"))
    return PackedWeights(first.layout, qweight, qzeros, scales, first.in_features,
                         sum(p.out_features for p in parts), first.group_size)


def interleave_out_features(parts: list[PackedWeights]) -> PackedWeights:
    """One layer whose outputs are those of ``parts`` in turn: output ``len(parts) * j + i`` is
    output ``j`` of ``parts[i]`` (same input, layout, group size and width). A gated MLP's gate
    and up rows so woven lie side by side in every tile of output rows, where the kernel's
    epilogue multiplies them (``kernels/reference.Epilogue``). Lossless: the GEMV layout
    stores each output row on its own (the GEMM layout is woven there and converted back)."""
    first = _check_joinable(parts)
    if any(p.out_features != first.out_features for p in parts):
        raise ValueError(f"cannot interleave layers of {[p.out_features for p in parts]} outputs: they must match")
    rows = [convert(p, "gemv") for p in parts]
    qweight, qzeros, scales = (torch.stack([getattr(p, name) for p in rows], dim=1).flatten(0, 1)
                               for name in ("qweight", "qzeros", "scales"))
    woven = PackedWeights("gemv", qweight, qzeros, scales, first.in_features, first.out_features * len(parts),
                          first.group_size)
    return convert(woven, first.layout)


def integers(w: PackedWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``intweight [N, K]``, ``zeros [N, K/G]``, ``scales [N, K/G]`` of either layout."""
    groups = w.in_features // w.group_size
    if w.layout == "gemm":
        intweight, zeros = unpack_gemm(w.qweight, w.qzeros)
        return intweight, zeros, w.scales.t()
    intweight, zeros = unpack_gemv(w.qweight, w.qzeros, w.group_size)
    return intweight, zeros, w.scales[:, :groups]


def dequantize(w: PackedWeights, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The weight in ``nn.Linear`` orientation ``[N, K]``: ``(q - z) * s``, computed in ``dtype``.

    With ``dtype=torch.float16`` this is exactly AutoAWQ's ``dequantize_gemm`` (transposed);
    ``torch.float64`` gives the reference the tests compare kernels with.
    """
    intweight, zeros, scales = integers(w)
    g = w.group_size
    z = zeros.repeat_interleave(g, dim=1)
    s = scales.to(dtype).repeat_interleave(g, dim=1)
    return (intweight - z).to(dtype) * s


def quantize_rtn(weight: torch.Tensor, group_size: int, zero_point: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest 4-bit quantization, the same arithmetic as AutoAWQ's ``pseudo_quantize_tensor``.

    Returns ``intweight [N, K]``, ``zeros [N, K/G]`` and fp16 ``scales [N, K/G]``. Without a
    zero point the symmetric range -8..7 is shifted to 0..15 with zero point 8.
    """
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features={k} is not a multiple of group_size={group_size}")
    w = weight.detach().float().reshape(-1, group_size)
    if zero_point:
        max_val, min_val = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
        scales = ((max_val - min_val).clamp(min=1e-5) / 15).half().float()
        zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    else:
        scales = (w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / 7).half().float()
        zeros = torch.full_like(scales, 8.0)
    q = torch.clamp(torch.round(w / scales) + zeros, 0, 15)
    return (q.reshape(n, k).to(torch.int32), zeros.reshape(n, -1).to(torch.int32),
            scales.reshape(n, -1).half())


def pack(intweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int, layout: str) -> PackedWeights:
    """Pack integers and fp16 scales (linear orientation) into ``layout``."""
    n, k = intweight.shape
    if layout == "gemm":
        qweight, qzeros = pack_gemm(intweight, zeros)
        return PackedWeights("gemm", qweight, qzeros, scales.t().contiguous().half(), k, n, group_size)
    if layout == "gemv":
        qweight, qzeros = pack_gemv(intweight, zeros, group_size)
        width = calculate_zeros_width(k, group_size) * PACK
        padded = torch.zeros(n, width, dtype=torch.float16, device=scales.device)
        padded[:, : scales.shape[1]] = scales
        return PackedWeights("gemv", qweight, qzeros, padded, k, n, group_size)
    raise ValueError(f"unknown layout {layout!r}: expected 'gemm' or 'gemv'")
