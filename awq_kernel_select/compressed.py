"""compressed-tensors' W4A16 ``pack-quantized`` format, and its lossless mapping to AutoAWQ's layouts.

llm-compressor (AutoAWQ's successor) writes this format, and vLLM and transformers 5 read it.
Per quantized linear, with ``N = out_features``, ``K = in_features``, ``G = group_size``
(compressed-tensors 0.20: ``compressors/pack_quantized``, ``entrypoints/convert/converters/autoawq.py``):

``weight_packed``      int32 ``[N, K / 8]``: ``q[n, 8j + i]`` in bits ``4i .. 4i+3`` of word ``[n, j]``
                       (stored as ``q - 8`` in int8, packed with the offset 8 added back: the nibble
                       is ``q`` itself, 0..15)
``weight_zero_point``  int32 ``[N / 8, K / G]``, packed the same way along N (asymmetric schemes only)
``weight_scale``       ``[N, K / G]`` in the model's dtype
``weight_shape``       int64 ``[2]``: ``N, K``

A symmetric scheme has no zero points: its zero point is 8 (``(q - 8) * s``), which is how
AutoAWQ-style checkpoints without a zero point (``zero_point: false``) hold theirs. Both directions
move the same integers and scales: ``(q - 8) - (z - 8) = q - z``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .layouts import PACK, SEQUENTIAL_ORDER, PackedWeights, integers, pack, pack_int4, unpack_int4

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
SYMMETRIC_ZERO = 8


class SchemeError(ValueError):
    """A compressed-tensors checkpoint whose scheme this library does not run; says which and why."""


@dataclass(frozen=True)
class CompressedScheme:
    """The one scheme of a W4A16 checkpoint this library runs."""

    group_size: int
    symmetric: bool
    ignore: tuple[str, ...] = ("lm_head",)


def quantization_config(scheme: CompressedScheme, version: str = "0.20.1") -> dict[str, Any]:
    """``config.json``'s ``quantization_config`` for the scheme, as compressed-tensors writes it."""
    weights = {"dynamic": False, "group_size": scheme.group_size, "num_bits": 4, "strategy": "group",
               "symmetric": scheme.symmetric, "type": "int"}
    return {
        "config_groups": {"config_group_0": {"format": FORMAT, "input_activations": None,
                                             "output_activations": None, "targets": ["Linear"],
                                             "weights": weights}},
        "format": FORMAT, "global_compression_ratio": None, "ignore": list(scheme.ignore),
        "kv_cache_scheme": None, "quant_method": QUANT_METHOD, "quantization_status": "compressed",
        "version": version,
    }


def read_scheme(quant: Mapping[str, Any], where: str) -> CompressedScheme:
    """The scheme of a ``quant_method: compressed-tensors`` config, or :class:`SchemeError` naming
    the field that asks for something else than int4 weights in groups with 16-bit activations."""
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise SchemeError(f"{where}.config_groups is missing or empty")
    schemes = []
    for name, group in groups.items():
        at = f"{where}.config_groups.{name}"
        if not isinstance(group, dict):
            raise SchemeError(f"{at} is a {type(group).__name__}, not an object")
        fmt = group.get("format") or quant.get("format")
        if fmt != FORMAT:
            raise SchemeError(f"{at}.format is {fmt!r}: this library runs {FORMAT!r} (int4 weights, 16-bit "
                              "activations) only; serve this checkpoint with vLLM")
        if group.get("input_activations") is not None:
            raise SchemeError(f"{at}.input_activations is set: this scheme quantizes activations too (W4A8/W8A8); "
                              "this library runs weight-only W4A16 checkpoints; serve it with vLLM")
        weights = group.get("weights")
        if not isinstance(weights, dict):
            raise SchemeError(f"{at}.weights is missing: no weight quantization to run")
        wanted = {"num_bits": 4, "type": "int", "strategy": "group"}
        for key, value in wanted.items():
            if weights.get(key) != value:
                raise SchemeError(f"{at}.weights.{key} is {weights.get(key)!r}: this library runs {key}={value!r}")
        if weights.get("dynamic"):
            raise SchemeError(f"{at}.weights.dynamic is true: only static weight scales are supported")
        if weights.get("actorder") not in (None, "static"):
            raise SchemeError(f"{at}.weights.actorder is {weights.get('actorder')!r}: activation reordering "
                              "(g_idx) is not supported by this library's kernels")
        if group.get("targets") not in (["Linear"], None):
            raise SchemeError(f"{at}.targets is {group.get('targets')!r}: only ['Linear'] is supported")
        size = weights.get("group_size")
        if not isinstance(size, int) or size <= 0 or size % PACK:
            raise SchemeError(f"{at}.weights.group_size is {size!r}: expected a positive multiple of 8")
        schemes.append((size, bool(weights.get("symmetric", True))))
    if len(set(schemes)) > 1:
        raise SchemeError(f"{where}.config_groups hold {len(set(schemes))} different schemes; this library loads "
                          "checkpoints with one group size and one symmetry")
    sparsity = quant.get("sparsity_config")
    if sparsity:
        raise SchemeError(f"{where}.sparsity_config is set: sparse checkpoints are not supported")
    ignore = quant.get("ignore") or []
    return CompressedScheme(schemes[0][0], schemes[0][1], tuple(str(i) for i in ignore))


def to_compressed(weights: PackedWeights, symmetric: bool, name: str = "") -> dict[str, torch.Tensor]:
    """One layer's compressed-tensors tensors (suffix -> tensor) from either AutoAWQ layout."""
    q, z, s = integers(weights)
    if symmetric and bool((z != SYMMETRIC_ZERO).any()):
        raise SchemeError(f"{name}: zero points other than {SYMMETRIC_ZERO} in a checkpoint without zero points "
                          "(zero_point: false); it cannot be written as a symmetric scheme")
    out = {"weight_packed": pack_int4(q, SEQUENTIAL_ORDER),
           "weight_scale": s.contiguous(),
           "weight_shape": torch.tensor([weights.out_features, weights.in_features], dtype=torch.int64)}
    if not symmetric:
        out["weight_zero_point"] = pack_int4(z.t().contiguous(), SEQUENTIAL_ORDER).t().contiguous()
    return out


def from_compressed(tensors: Mapping[str, torch.Tensor], group_size: int, layout: str, name: str = "") -> PackedWeights:
    """One layer's AutoAWQ buffers in ``layout`` from its compressed-tensors tensors; every shape
    and dtype checked, the scales kept exactly (fp16: a bf16 scale that fp16 cannot hold exactly
    is refused)."""
    missing = [s for s in ("weight_packed", "weight_scale", "weight_shape") if s not in tensors]
    if missing:
        raise SchemeError(f"{name}: {', '.join(missing)} missing")
    n, k = (int(v) for v in tensors["weight_shape"].tolist())
    packed, scale = tensors["weight_packed"], tensors["weight_scale"]
    if k % group_size or k % PACK or n % PACK:
        raise SchemeError(f"{name}: weight_shape {n} x {k} does not fit group_size {group_size} (K must be a "
                          "multiple of it and of 8, N of 8)")
    expect = {"weight_packed": ((n, k // PACK), torch.int32), "weight_scale": ((n, k // group_size), None),
              "weight_zero_point": ((n // PACK, k // group_size), torch.int32)}
    for suffix, (shape, dtype) in expect.items():
        t = tensors.get(suffix)
        if t is None:
            continue
        if tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype):
            raise SchemeError(f"{name}.{suffix} is {tuple(t.shape)} {t.dtype}; a {n} x {k} layer with group size "
                              f"{group_size} has {shape}{'' if dtype is None else f' {dtype}'}")
    if not scale.is_floating_point():
        raise SchemeError(f"{name}.weight_scale is {scale.dtype}, expected a float type")
    scale16 = scale.to(torch.float16)
    if scale.dtype != torch.float16 and not torch.equal(scale16.to(scale.dtype), scale):
        raise SchemeError(f"{name}.weight_scale ({scale.dtype}) holds values fp16 cannot represent exactly; "
                          "AutoAWQ's layouts keep fp16 scales")
    q = unpack_int4(packed, SEQUENTIAL_ORDER)
    zp = tensors.get("weight_zero_point")
    if zp is None:
        z = torch.full((n, k // group_size), SYMMETRIC_ZERO, dtype=torch.int32)
    else:
        z = unpack_int4(zp.t().contiguous(), SEQUENTIAL_ORDER).t()
    return pack(q, z, scale16, group_size, layout)
