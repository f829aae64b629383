"""Triton helpers that dequantize tiles of AutoAWQ's packed int4 words in registers.

Five ways, each used where it measured faster on the H100 (docs/kernels.md):

* **words in fp16x2 pairs** (``dequant8_f16``, ``words_to_f16``, the ``tl.dot`` paths): one LOP3
  decodes two nibbles of a word at once into an fp16x2 (Marlin's trick), in PTX on the GPU;
* **whole tiles** (``dequant_*_layout_tile``, fp16, the dequantize kernel): the 8 nibbles of each
  word are unpacked along a new axis and the tile is reshaped to ``[BLOCK_K, BLOCK_N]`` (or
  ``[BLOCK_N, BLOCK_K]``);
* **one token in fp16x2** (``dot16_f16x2``, the GEMV layout's one-token path for fp16 x): two
  neighbouring words decoded in fp16x2 pairs and dotted with x's fp16x2 pairs, in PTX on the GPU;
* **tokens in pairs** (``decode16_pairs`` + ``dot16_pairs``: bf16 x, and two or four tokens of
  fp16 or bf16 x): the same two words decoded once into fp16x2 or bf16x2 pairs, then dotted with each
  token's x pairs;
* **nibble by nibble** (``nibble_as_f32_one_plus_q16``, the other FMA paths): nibble ``c`` of word
  ``[n, j]`` is taken in the register layout of the loaded words, with no reshape. On the GPU
  two PTX helpers do it (``dot8_one_plus_q16`` for a GEMV-layout word, ``nibble_fma`` for one
  GEMM-layout weight); each has its plain-Triton twin, which the CPU interpreter runs.

int4 -> fp16 without a conversion instruction: ``0x6400 | q`` read as fp16 is ``1024 + q``
exactly, so ``(1024 + q) - (1024 + z)`` is the exact integer ``q - z``, and one multiply by the
scale rounds once, as AutoAWQ's own ``(q - z) * s`` does.

int4 -> bf16 (the ``tl.dot`` paths with bf16 activations, whose values fp16 cannot hold): the
same with ``0x4300 | q``, which reads as bf16 ``128 + q``; the scale is taken to bf16 first, so
each weight is ``(q - z) * bf16(s)`` rounded once to bf16. The Triton interpreter keeps bf16 as
raw 16-bit integers (its bf16 arithmetic and ``tl.dot`` are not numeric), so under it
(``EMULATE``) the same bf16 values are carried in fp32 and the dot runs in fp32.

int4 -> fp32 for the FMA paths, two integer instructions per weight: the nibble is shifted to
mantissa bits 19..22 and or-ed into the bit pattern of 1.0, which reads as ``1 + q / 16``
exactly. The zero point and scale are folded once per group or per packed word:
``(q - z) * s = (1 + q / 16) * 16 s - (16 + z) * s``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def one_plus_q16(bits):
    """``1 + q / 16`` as fp32, for ``q`` held in bits 19..22 of ``bits`` (the others are ignored)."""
    return ((bits & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def fold_zero_into_scale(s, z):
    """``(16 s, -(16 + z) s)``: then ``(q - z) s = one_plus_q16 * 16 s - (16 + z) s``."""
    return 16.0 * s, -(16.0 + z) * s


@triton.jit
def nibble_as_f32_one_plus_q16(words, C: tl.constexpr):
    """``1 + q / 16`` as fp32, ``q = (words >> 4C) & 0xF``: the nibble moved to mantissa bits 19..22."""
    if 4 * C <= 19:
        bits = words << (19 - 4 * C)
    else:
        bits = words >> (4 * C - 19)
    return one_plus_q16(bits)


# One packed word (8 nibbles, the GEMV layout's 8 consecutive K columns) dotted with 8 fp32 x
# values: per nibble one shift, one LOP3 (``(bits & 0x780000) | 0x3F800000``) and one FMA.
# Written in PTX because Triton's code for the same expression, after LLVM and ptxas, spends
# about 6 instructions per weight (constants re-materialised, conversions): measured in SASS,
# docs/kernels.md. ``dot8_one_plus_q16_reference`` is the same arithmetic in Triton, for the
# interpreter (CPU) and as the specification.
_DOT8_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 t, e;
mov.b32 e, 0x3F800000;
shl.b32 t, $1, 19; lop3.b32 t, t, 0x780000, e, 0xEA; mul.rn.f32 $0, t, $2;
shl.b32 t, $1, 15; lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $3, $0;
shl.b32 t, $1, 11; lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $4, $0;
shl.b32 t, $1, 7;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $5, $0;
shl.b32 t, $1, 3;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $6, $0;
shr.u32 t, $1, 1;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $7, $0;
shr.u32 t, $1, 5;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $8, $0;
shr.u32 t, $1, 9;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $9, $0;
}
""")


@triton.jit
def dot8_one_plus_q16_reference(words, x0, x1, x2, x3, x4, x5, x6, x7):
    """``sum_c (1 + q_c / 16) x_c`` over the 8 nibbles ``q_c`` of each word (fp32)."""
    t = nibble_as_f32_one_plus_q16(words, 0) * x0
    t += nibble_as_f32_one_plus_q16(words, 1) * x1
    t += nibble_as_f32_one_plus_q16(words, 2) * x2
    t += nibble_as_f32_one_plus_q16(words, 3) * x3
    t += nibble_as_f32_one_plus_q16(words, 4) * x4
    t += nibble_as_f32_one_plus_q16(words, 5) * x5
    t += nibble_as_f32_one_plus_q16(words, 6) * x6
    t += nibble_as_f32_one_plus_q16(words, 7) * x7
    return t


# The same for two tokens: each nibble decoded once, two FMAs.
_DOT8X2_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 t, e;
mov.b32 e, 0x3F800000;
shl.b32 t, $2, 19; lop3.b32 t, t, 0x780000, e, 0xEA; mul.rn.f32 $0, t, $3;  mul.rn.f32 $1, t, $11;
shl.b32 t, $2, 15; lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $4, $0; fma.rn.f32 $1, t, $12, $1;
shl.b32 t, $2, 11; lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $5, $0; fma.rn.f32 $1, t, $13, $1;
shl.b32 t, $2, 7;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $6, $0; fma.rn.f32 $1, t, $14, $1;
shl.b32 t, $2, 3;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $7, $0; fma.rn.f32 $1, t, $15, $1;
shr.u32 t, $2, 1;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $8, $0; fma.rn.f32 $1, t, $16, $1;
shr.u32 t, $2, 5;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $9, $0; fma.rn.f32 $1, t, $17, $1;
shr.u32 t, $2, 9;  lop3.b32 t, t, 0x780000, e, 0xEA; fma.rn.f32 $0, t, $10, $0; fma.rn.f32 $1, t, $18, $1;
}
""")


@triton.jit
def dot8x2_one_plus_q16(words, a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7,
                        USE_PTX: tl.constexpr):
    """``dot8_one_plus_q16`` of the same words with two tokens' x (``a`` and ``b``)."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_DOT8X2_PTX, "=f,=f,r,f,f,f,f,f,f,f,f,f,f,f,f,f,f,f,f",
                                         [words, a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7],
                                         dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        return (dot8_one_plus_q16_reference(words, a0, a1, a2, a3, a4, a5, a6, a7),
                dot8_one_plus_q16_reference(words, b0, b1, b2, b3, b4, b5, b6, b7))


@triton.jit
def dot8_one_plus_q16(words, x0, x1, x2, x3, x4, x5, x6, x7, USE_PTX: tl.constexpr):
    """``dot8_one_plus_q16_reference``, in PTX on a GPU (``USE_PTX``)."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_DOT8_PTX, "=f,r,f,f,f,f,f,f,f,f",
                                         [words, x0, x1, x2, x3, x4, x5, x6, x7],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return dot8_one_plus_q16_reference(words, x0, x1, x2, x3, x4, x5, x6, x7)


# Packed words of the GEMV layout (8 consecutive K columns each) dotted with x in fp16x2, for
# fp16 activations at M = 1: about 2 instructions per weight where ``dot8_one_plus_q16`` spends
# 3. One LOP3 takes two nibbles at once into the two halves of an fp16x2 with the magic
# exponent of 1024 (``0x6400 | q`` reads as ``1024 + q``; a nibble left in bits 4..7 reads as
# ``1024 + 16 q``), one HFMA2 takes the pair to ``(q - z) / 16`` exactly (``(1024 + q) / 16 -
# (64 + z / 16)`` and ``(1024 + 16 q) / 256 - (4 + z / 16)``: every value on the way is an
# fp16 number), HFMA2s multiply the pairs by x's pairs and add them, and the two halves go to
# fp32. Nibbles c and c + 4 share a pair: x comes as ``(x_c, x_{c+4})`` pairs (``x_pairs``).
# Two neighbouring words (one int64) share one fp16x2 sum, so the halves go to fp32 once per 16
# weights: each half sums 8 products rounded to fp16 (11 bits) before it reaches the fp32
# accumulator; ``/ 16`` keeps it in range for |x| up to ~8000 (each product is at most |x|).
def _decoded_pairs(word: str, low: str = "$10", high: str = "$11") -> str:
    """PTX: ``(q - z) / 16`` of nibbles (0, 4), (1, 5), (2, 6), (3, 7) of ``word`` into the
    fp16x2 registers a, b, c, d (``low``, ``high``: the operands holding ``zero_pairs``)."""
    return f"""shr.u32 t, {word}, 8;
lop3.b32 a, {word}, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 b, {word}, 0x00F000F0, 0x64006400, 0xEA;
lop3.b32 c, t, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 d, t, 0x00F000F0, 0x64006400, 0xEA;
fma.rn.f16x2 a, a, k16, {low};
fma.rn.f16x2 b, b, k256, {high};
fma.rn.f16x2 c, c, k16, {low};
fma.rn.f16x2 d, d, k256, {high};
"""


# The fp16x2 sum's two halves to fp32 and added: the end of both fp16 dots.
_F16X2_HALVES_ADDED = """mov.b32 {lo, hi}, acc;
cvt.f32.f16 flo, lo;
cvt.f32.f16 fhi, hi;
add.rn.f32 $0, flo, fhi;
}
"""
_DOT16_F16X2_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 w0, w1, t, a, b, c, d, k16, k256, acc;
.reg .f16 lo, hi;
.reg .f32 flo, fhi;
mov.b64 {w0, w1}, $1;
mov.b32 k16, 0x2C002C00;
mov.b32 k256, 0x1C001C00;
""" + _decoded_pairs("w0") + """mul.rn.f16x2 acc, a, $2;
fma.rn.f16x2 acc, b, $3, acc;
fma.rn.f16x2 acc, c, $4, acc;
fma.rn.f16x2 acc, d, $5, acc;
""" + _decoded_pairs("w1") + """fma.rn.f16x2 acc, a, $6, acc;
fma.rn.f16x2 acc, b, $7, acc;
fma.rn.f16x2 acc, c, $8, acc;
fma.rn.f16x2 acc, d, $9, acc;
""" + _F16X2_HALVES_ADDED)


@triton.jit
def dot16_f16x2(words2, e0, e1, e2, e3, o0, o1, o2, o3, low, high, USE_PTX: tl.constexpr):
    """``sum_c (q_c - z) / 16 * x_c`` over the 16 nibbles of two neighbouring words held in one
    int64 (the low word: the even packed column, x pairs ``e``; the high one: the odd column,
    x pairs ``o``), fp32; x as ``x_pairs``, the zero as ``zero_pairs``; in PTX on a GPU."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_DOT16_F16X2_PTX, "=f,l,r,r,r,r,r,r,r,r,r,r",
                                         [words2, e0, e1, e2, e3, o0, o1, o2, o3, low, high],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return (dot8_f16x2_reference(words2.to(tl.int32), e0, e1, e2, e3, low)
                + dot8_f16x2_reference((words2 >> 32).to(tl.int32), o0, o1, o2, o3, low))


@triton.jit
def zero_pairs(z):
    """The fp16x2 bit patterns of ``-(64 + z / 16)`` and ``-(4 + z / 16)`` (both halves), for
    int32 ``z`` in 0..15: the constants ``dot16_f16x2`` adds to its decoded pairs."""
    low = 0xD400 + z  # -(64 + z / 16): the ulp of 64 is 1 / 16
    high = 0xC400 + 16 * z  # -(4 + z / 16): the ulp of 4 is 1 / 256
    return low | (low << 16), high | (high << 16)


@triton.jit
def _half(pair, H: tl.constexpr):
    """Half ``H`` (0: low, 1: high) of fp16x2 bit patterns, as fp32."""
    return ((pair >> (16 * H)) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


_X_PAIRS_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 a, b, c, d;
mov.b64 {a, b}, $4;
mov.b64 {c, d}, $5;
prmt.b32 $0, a, c, 0x5410;
prmt.b32 $1, a, c, 0x7632;
prmt.b32 $2, b, d, 0x5410;
prmt.b32 $3, b, d, 0x7632;
}
""")


@triton.jit
def x_pairs(x_ptr, offs_pk, K, EVEN_K: tl.constexpr, USE_PTX: tl.constexpr):
    """x's fp16 values ``8j .. 8j + 7`` for the packed columns ``j = offs_pk`` as four fp16x2
    bit patterns ``(x_c, x_{c+4})``, c = 0..3 (int32; zero from column K on unless ``EVEN_K``).
    ``x_ptr`` points to fp16 and is 8-byte aligned: x is read as two int64 words per packed
    column, and the halves are paired with one PRMT each on a GPU."""
    words = x_ptr.to(tl.pointer_type(tl.int64)) + offs_pk * 2
    if EVEN_K:
        lo = tl.load(words)  # (x0, x1, x2, x3)
        hi = tl.load(words + 1)  # (x4, x5, x6, x7)
    else:
        lo = tl.load(words, mask=offs_pk < K // 8, other=0)
        hi = tl.load(words + 1, mask=offs_pk < K // 8, other=0)
    return _paired(lo, hi, USE_PTX)


@triton.jit
def _paired(lo, hi, USE_PTX: tl.constexpr):
    """``(x_c, x_{c+4})`` pairs, c = 0..3, from int64 ``lo = (x0, x1, x2, x3)`` and ``hi = (x4, .., x7)``."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_X_PAIRS_PTX, "=r,=r,=r,=r,l,l", [lo, hi],
                                         dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        a = lo.to(tl.int32)  # (x0, x1)
        b = (lo >> 32).to(tl.int32)  # (x2, x3)
        c = hi.to(tl.int32)  # (x4, x5)
        d = (hi >> 32).to(tl.int32)  # (x6, x7)
        return ((a & 0xFFFF) | (c << 16), ((a >> 16) & 0xFFFF) | ((c >> 16) << 16),
                (b & 0xFFFF) | (d << 16), ((b >> 16) & 0xFFFF) | ((d >> 16) << 16))


@triton.jit
def _pair_products(words, C: tl.constexpr, pair, z):
    """``(q_c - z) / 16 * x_c + (q_{c+4} - z) / 16 * x_{c+4}`` in fp32, x as the fp16x2 ``pair``."""
    q_lo = ((words >> (4 * C)) & 0xF).to(tl.float32)
    q_hi = ((words >> (4 * C + 16)) & 0xF).to(tl.float32)
    return (q_lo - z) * 0.0625 * _half(pair, 0) + (q_hi - z) * 0.0625 * _half(pair, 1)


@triton.jit
def dot8_f16x2_reference(words, p0, p1, p2, p3, low):
    """``sum_c (q_c - z) / 16 * x_c`` over one word's 8 nibbles in fp32: the arithmetic of
    ``dot16_f16x2`` without its fp16 roundings, ``z`` read back from ``low`` (``zero_pairs``)."""
    z = (low & 0xF).to(tl.float32)
    t = _pair_products(words, 0, p0, z) + _pair_products(words, 1, p1, z)
    t += _pair_products(words, 2, p2, z) + _pair_products(words, 3, p3, z)
    return t


# --- several tokens in pairs: decode once, dot per token ------------------------------------
#
# For two or four fp16 tokens, and one, two or four bf16 tokens, ``dot16_f16x2``'s work is split
# in two: the two words of an int64 are decoded once into eight pair registers
# (``decode16_pairs``), then each token's x pairs are dotted with them (``dot16_pairs``), so that
# a weight costs its decode once and one HFMA2 half per token. fp16 pairs are ``(q - z) / 16`` as
# in ``dot16_f16x2`` (the sum of 8 products per half in fp16); bf16 pairs are the exact ``q - z``
# (``0x4300 | q`` reads as ``128 + q``; one FMA by 1 with ``-(128 + z)``), and each word's 4
# products per half are summed in bf16 before fp32: 8 would add ~2.5e-3 of rounding error where 4
# add ~1.5e-3 (float64 emulation of 4096-long rows; bf16 output rounding alone is ~1.6e-3, bf16
# cuBLAS ~2.4e-3).
def _decoded_bf16_pairs(word: str) -> str:
    """PTX: ``q - z`` of nibbles (0, 4), (1, 5), (2, 6), (3, 7) of ``word`` into the bf16x2
    registers a, b, c, d (``zn``: the pair of ``-(128 + z)``; bf16's 7 mantissa bits take a nibble
    only in bits 0..3 of each half, hence three shifts)."""
    return f"""lop3.b32 a, {word}, 0x000F000F, 0x43004300, 0xEA;
shr.u32 t, {word}, 4;
lop3.b32 b, t, 0x000F000F, 0x43004300, 0xEA;
shr.u32 t, {word}, 8;
lop3.b32 c, t, 0x000F000F, 0x43004300, 0xEA;
shr.u32 t, {word}, 12;
lop3.b32 d, t, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 a, a, one, zn;
fma.rn.bf16x2 b, b, one, zn;
fma.rn.bf16x2 c, c, one, zn;
fma.rn.bf16x2 d, d, one, zn;
"""


_PAIRS_OUT = """mov.b32 $0, a; mov.b32 $1, b; mov.b32 $2, c; mov.b32 $3, d;
"""
_PAIRS_OUT_HIGH = """mov.b32 $4, a; mov.b32 $5, b; mov.b32 $6, c; mov.b32 $7, d;
"""
# Inputs: $8 the two words (int64), $9 and $10 ``zero_pairs``' low and high.
_DECODE16_F16X2_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 w0, w1, t, a, b, c, d, k16, k256;
mov.b64 {w0, w1}, $8;
mov.b32 k16, 0x2C002C00;
mov.b32 k256, 0x1C001C00;
""" + _decoded_pairs("w0", "$9", "$10") + _PAIRS_OUT + _decoded_pairs("w1", "$9", "$10") + _PAIRS_OUT_HIGH + "}")
# Inputs: $8 the two words (int64), $9 the bf16x2 pair of ``-(128 + z)`` (``bf16_zero_pair``).
_DECODE16_BF16X2_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 w0, w1, t, a, b, c, d, one, zn;
mov.b64 {w0, w1}, $8;
mov.b32 one, 0x3F803F80;
mov.b32 zn, $9;
""" + _decoded_bf16_pairs("w0") + _PAIRS_OUT + _decoded_bf16_pairs("w1") + _PAIRS_OUT_HIGH + "}")
# Inputs: $1..$8 the decoded pairs (low word a..d, high word a..d), $9..$12 x pairs ``e``,
# $13..$16 ``o`` (``x_pairs``). fp16: one fp16x2 sum of the 16 products.
_DOT16_F16X2_PAIRS_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 acc;
.reg .f16 lo, hi;
.reg .f32 flo, fhi;
mul.rn.f16x2 acc, $1, $9;
fma.rn.f16x2 acc, $2, $10, acc;
fma.rn.f16x2 acc, $3, $11, acc;
fma.rn.f16x2 acc, $4, $12, acc;
fma.rn.f16x2 acc, $5, $13, acc;
fma.rn.f16x2 acc, $6, $14, acc;
fma.rn.f16x2 acc, $7, $15, acc;
fma.rn.f16x2 acc, $8, $16, acc;
""" + _F16X2_HALVES_ADDED)
# bf16: one bf16x2 sum per word (4 products per half), the four halves added in fp32 (a bf16
# half is the top half of an fp32: one shift or mask each). ``-0`` starts each sum: bf16x2 mul
# needs sm_90, FMA sm_80.
_DOT16_BF16X2_PAIRS_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 acc0, acc1, nz, t0, t1, t2, t3;
.reg .f32 s;
mov.b32 nz, 0x80008000;
fma.rn.bf16x2 acc0, $1, $9, nz;
fma.rn.bf16x2 acc1, $5, $13, nz;
fma.rn.bf16x2 acc0, $2, $10, acc0;
fma.rn.bf16x2 acc1, $6, $14, acc1;
fma.rn.bf16x2 acc0, $3, $11, acc0;
fma.rn.bf16x2 acc1, $7, $15, acc1;
fma.rn.bf16x2 acc0, $4, $12, acc0;
fma.rn.bf16x2 acc1, $8, $16, acc1;
shl.b32 t0, acc0, 16;
and.b32 t1, acc0, 0xFFFF0000;
shl.b32 t2, acc1, 16;
and.b32 t3, acc1, 0xFFFF0000;
add.rn.f32 s, t0, t1;
add.rn.f32 s, s, t2;
add.rn.f32 $0, s, t3;
}
""")


@triton.jit
def bf16_zero_pair(z):
    """The bf16x2 bit pattern of ``-(128 + z)`` (both halves) for int32 ``z`` in 0..15: the ulp of 128 is 1."""
    return (0xC300 + z) * 0x10001


@triton.jit
def _pair_bits(lo, hi, BF16: tl.constexpr):
    """fp32 ``lo`` and ``hi`` (values the pair's type holds exactly) as the bits of an fp16x2 or bf16x2."""
    if BF16:  # a bf16 is the top half of an fp32
        return ((lo.to(tl.int32, bitcast=True) >> 16) & 0xFFFF) | (hi.to(tl.int32, bitcast=True) & -65536)
    else:
        return ((lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF)
                | (hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) << 16))


@triton.jit
def _bf16_half(pair, H: tl.constexpr):
    """Half ``H`` (0: low, 1: high) of bf16x2 bit patterns, as fp32 (``_half`` for fp16x2)."""
    return ((pair >> (16 * H)) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _nibble_pair(word, C: tl.constexpr, zf, unit, BF16: tl.constexpr):
    """Nibbles ``C`` and ``C + 4`` of ``word`` as the pair ``((q - z) * unit)`` (``decode16_pairs``)."""
    return _pair_bits((((word >> (4 * C)) & 0xF).to(tl.float32) - zf) * unit,
                      (((word >> (4 * C + 16)) & 0xF).to(tl.float32) - zf) * unit, BF16)


@triton.jit
def _decoded_word_reference(word, z, BF16: tl.constexpr):
    """One word's four pairs as ``decode16_pairs`` makes them (``z`` int32)."""
    unit = 1.0 if BF16 else 0.0625
    zf = z.to(tl.float32)
    return (_nibble_pair(word, 0, zf, unit, BF16), _nibble_pair(word, 1, zf, unit, BF16),
            _nibble_pair(word, 2, zf, unit, BF16), _nibble_pair(word, 3, zf, unit, BF16))


@triton.jit
def decode16_pairs(words2, low, high, BF16: tl.constexpr, USE_PTX: tl.constexpr):
    """The 16 weights of two neighbouring words (one int64, the even word low) as eight pair
    registers (int32 bits): the low word's nibbles (0, 4), (1, 5), (2, 6), (3, 7), then the high
    word's. fp16: ``(q - z) / 16`` with ``low``, ``high`` from ``zero_pairs``; bf16: ``q - z``
    with ``low`` from ``bf16_zero_pair`` (``high`` unused). ``z`` is ``low``'s last nibble."""
    if USE_PTX:
        if BF16:
            return tl.inline_asm_elementwise(_DECODE16_BF16X2_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,l,r", [words2, low],
                                             dtype=(tl.int32, ) * 8, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(_DECODE16_F16X2_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,l,r,r",
                                             [words2, low, high], dtype=(tl.int32, ) * 8, is_pure=True, pack=1)
    else:
        z = low & 0xF
        a, b, c, d = _decoded_word_reference(words2.to(tl.int32), z, BF16)
        a2, b2, c2, d2 = _decoded_word_reference((words2 >> 32).to(tl.int32), z, BF16)
        return a, b, c, d, a2, b2, c2, d2


@triton.jit
def _bf16_word_sum(p0, p1, p2, p3, x0, x1, x2, x3, H: tl.constexpr):
    """Half ``H`` of one word's bf16x2 sum in ``dot16_pairs``: each FMA rounded to bf16."""
    acc = bf16_in_f32(_bf16_half(p0, H) * _bf16_half(x0, H))
    acc = bf16_in_f32(acc + _bf16_half(p1, H) * _bf16_half(x1, H))
    acc = bf16_in_f32(acc + _bf16_half(p2, H) * _bf16_half(x2, H))
    return bf16_in_f32(acc + _bf16_half(p3, H) * _bf16_half(x3, H))


@triton.jit
def dot16_pairs(p0, p1, p2, p3, p4, p5, p6, p7, e0, e1, e2, e3, o0, o1, o2, o3,
                BF16: tl.constexpr, USE_PTX: tl.constexpr):
    """``sum`` over the 16 weights of ``decode16_pairs``' pairs times one token's x pairs
    (``e`` for the low word, ``o`` for the high one, as ``x_pairs``), fp32. The reference (no
    PTX) rounds bf16 sums as the PTX does, fp16 ones not (as ``dot8_f16x2_reference``)."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_DOT16_BF16X2_PAIRS_PTX if BF16 else _DOT16_F16X2_PAIRS_PTX,
                                         "=f,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
                                         [p0, p1, p2, p3, p4, p5, p6, p7, e0, e1, e2, e3, o0, o1, o2, o3],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif BF16:
        return ((_bf16_word_sum(p0, p1, p2, p3, e0, e1, e2, e3, 0) + _bf16_word_sum(p0, p1, p2, p3, e0, e1, e2, e3, 1))
                + _bf16_word_sum(p4, p5, p6, p7, o0, o1, o2, o3, 0) + _bf16_word_sum(p4, p5, p6, p7, o0, o1, o2, o3, 1))
    else:
        t = _f16_pair_dot(p0, e0) + _f16_pair_dot(p1, e1) + _f16_pair_dot(p2, e2) + _f16_pair_dot(p3, e3)
        return t + _f16_pair_dot(p4, o0) + _f16_pair_dot(p5, o1) + _f16_pair_dot(p6, o2) + _f16_pair_dot(p7, o3)


@triton.jit
def _f16_pair_dot(pair, x):
    """Both halves' products of two fp16x2 bit patterns, added in fp32."""
    return _half(pair, 0) * _half(x, 0) + _half(pair, 1) * _half(x, 1)


# One weight of the GEMM layout's FMA path: ``acc + ((1 + q/16) * 16s - (16 + z)s) * x`` with
# ``q`` the nibble that a left rotation by ``rot`` brings to bits 19..22 (one funnel shift).
_NIBBLE_FMA_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 t, e;
mov.b32 e, 0x3F800000;
shf.l.wrap.b32 t, $1, $1, $2;
lop3.b32 t, t, 0x780000, e, 0xEA;
fma.rn.f32 t, t, $3, $4;
fma.rn.f32 $0, t, $5, $6;
}
""")


@triton.jit
def nibble_fma(words, rot, s16, zs, x, acc, USE_PTX: tl.constexpr):
    """``acc + (q - z) s x`` for the nibble ``q`` at bits ``19 - rot`` (mod 32) of ``words``
    (``rot`` = 19 - 4 * nibble, as an int32 tensor), with ``16s, -(16 + z)s`` folded."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_NIBBLE_FMA_PTX, "=f,r,r,f,f,f,f", [words, rot, s16, zs, x, acc],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        shift = 19 - rot  # 4 * nibble
        return acc + (one_plus_q16((words >> shift) << 19) * s16 + zs) * x


@triton.jit
def gemv_group_zero_scale(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                          GROUP_SIZE: tl.constexpr):
    """The GEMV layout's zero (int32) and scale of the group holding column ``k0`` for rows
    ``offs_n``, shaped like ``offs_n`` (``[BLOCK_N, 1]`` or ``[BLOCK_N]``: the shape decides the
    register layout Triton gives them)."""
    group = k0 // GROUP_SIZE
    zw = tl.load(qzeros_ptr + offs_n * stride_qzeros + group // 8, mask=mask_n, other=0)
    s = tl.load(scales_ptr + offs_n * stride_scales + group, mask=mask_n, other=0.0)
    return (zw >> ((group % 8) * 4)) & 0xF, s


@triton.jit
def gemv_tile_zero_scale(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                         GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, WIDTH: tl.constexpr):
    """The zero (int32) and scale of the GEMV-layout tile at column ``k0``: one per row,
    ``[BLOCK_N, 1]``, when the tile lies in one group (loaded in that shape: no layout
    conversion), else one per ``WIDTH`` columns of K, ``[BLOCK_N, BLOCK_K / WIDTH]`` (``WIDTH``
    columns never straddle a group)."""
    if BLOCK_K <= GROUP_SIZE:
        return gemv_group_zero_scale(qzeros_ptr, scales_ptr, offs_n[:, None], mask_n[:, None], k0, stride_qzeros,
                                     stride_scales, GROUP_SIZE)
    else:
        group = (k0 + WIDTH * tl.arange(0, BLOCK_K // WIDTH)) // GROUP_SIZE
        zw = tl.load(qzeros_ptr + offs_n[:, None] * stride_qzeros + (group // 8)[None, :],
                     mask=mask_n[:, None], other=0)
        s = tl.load(scales_ptr + offs_n[:, None] * stride_scales + group[None, :], mask=mask_n[:, None], other=0.0)
        return (zw >> ((group % 8) * 4)[None, :]) & 0xF, s


@triton.jit
def gemv_group_scales_f32(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                          GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr):
    """``(16 s, -(16 + z) s)`` in fp32 for the GEMV-layout tile at column ``k0`` (see the top):
    per row, or per packed column j when the tile spans groups."""
    z, s = gemv_tile_zero_scale(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                                GROUP_SIZE, BLOCK_K, 8)
    return fold_zero_into_scale(s.to(tl.float32), z.to(tl.float32))


@triton.jit
def gemv_group_zero_pairs(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                          GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BF16: tl.constexpr = False):
    """``zero_pairs(z)`` and ``16 s`` (fp32) for the GEMV-layout tile at column ``k0``: per row,
    or per pair of packed columns when the tile spans groups. ``BF16`` (``decode16_pairs`` in
    bf16): ``bf16_zero_pair(z)`` twice and ``s``."""
    z, s = gemv_tile_zero_scale(qzeros_ptr, scales_ptr, offs_n, mask_n, k0, stride_qzeros, stride_scales,
                                GROUP_SIZE, BLOCK_K, 16)
    if BF16:
        zn = bf16_zero_pair(z)
        return zn, zn, s.to(tl.float32)
    else:
        low, high = zero_pairs(z)
        return low, high, 16.0 * s.to(tl.float32)


# --- whole tiles ---------------------------------------------------------------------------


@triton.jit
def _f16_plus_1024(q):
    """``1024 + q`` as fp16 for int32 ``q`` in 0..15 (bit trick, no conversion instruction)."""
    return (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def bf16_in_f32(v):
    """fp32 ``v`` rounded to the nearest bf16 (ties to even), held in fp32: integer arithmetic on
    its bits, exact under the interpreter too, whose own conversion to bf16 errs by up to 2^-7
    (a value that bf16 holds exactly converts exactly there)."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def as_bf16(v, EMULATE: tl.constexpr):
    """fp32 or fp16 ``v`` rounded to bf16: a bf16 tensor, or under the interpreter (``EMULATE``)
    the bf16 values held in fp32."""
    if EMULATE:
        return bf16_in_f32(v.to(tl.float32))
    else:
        return v.to(tl.float32).to(tl.bfloat16)


@triton.jit
def _whole_tile_weights(q, z, s, BF16: tl.constexpr):
    """``(q - z) * s`` for int32 nibbles ``q`` and zeros ``z``: in fp16 (rounded once), or with
    ``BF16`` the exact product ``(q - z) * bf16(s)`` rounded once to bf16, held in fp32."""
    if BF16:
        return bf16_in_f32((q - z).to(tl.float32) * bf16_in_f32(s.to(tl.float32)))
    else:
        return (_f16_plus_1024(q) - _f16_plus_1024(z)) * s.to(tl.float16)


@triton.jit
def dequant_gemm_layout_tile(
    qweight_ptr, qzeros_ptr, scales_ptr,
    offs_k, pid_n, k0, K, N,
    stride_qweight, stride_qzeros, stride_scales,
    GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BF16: tl.constexpr = False,
):
    """fp16 (``BF16``: bf16 values in fp32) ``W[k, n]`` for rows ``offs_k`` and the ``pid_n``-th block of
    ``BLOCK_N`` columns.

    GEMM layout: ``qweight [K, N/8]``, nibble ``i`` of a word holds column ``8j + ORDER[i]``,
    ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``; so column ``8j + c`` sits at shift
    ``4 * REVERSE[c] = 4 * (c // 2) + 16 * (c % 2)``.
    """
    offs_pn = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)  # packed columns
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_pn = offs_pn < N // 8
    q = tl.load(
        qweight_ptr + offs_k[:, None] * stride_qweight + offs_pn[None, :],
        mask=(offs_k[:, None] < K) & mask_pn[None, :], other=0,
    )
    group = k0 // GROUP_SIZE
    z = tl.load(qzeros_ptr + group * stride_qzeros + offs_pn, mask=mask_pn, other=0)
    s = tl.load(scales_ptr + group * stride_scales + offs_n, mask=offs_n < N, other=0.0)

    c = tl.arange(0, 8)
    shifts = 4 * (c // 2) + 16 * (c % 2)
    q = tl.reshape((q[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_K, BLOCK_N))
    z = tl.reshape((z[:, None] >> shifts[None, :]) & 0xF, (BLOCK_N,))
    return _whole_tile_weights(q, z[None, :], s[None, :], BF16)  # [BLOCK_K, BLOCK_N]


@triton.jit
def dequant_gemv_layout_tile(
    qweight_ptr, qzeros_ptr, scales_ptr,
    offs_n, k0, K, N,
    stride_qweight, stride_qzeros, stride_scales,
    GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BF16: tl.constexpr = False,
):
    """fp16 ``W[n, k]`` (transposed tile) for rows ``offs_n`` and columns ``k0 .. k0+BLOCK_K``
    (``BF16``: as ``dequant_gemm_layout_tile``).

    GEMV layout: ``qweight [N, K/8]`` with nibble ``i`` holding column ``8j + i``;
    ``qzeros [N, Z]`` packs the zero of group ``g`` in word ``g // 8``, nibble ``g % 8``;
    ``scales [N, 8Z]`` holds group ``g`` in column ``g``.
    """
    offs_pk = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    mask_n = offs_n < N
    q = tl.load(
        qweight_ptr + offs_n[:, None] * stride_qweight + offs_pk[None, :],
        mask=mask_n[:, None] & (offs_pk[None, :] < K // 8), other=0,
    )
    group = k0 // GROUP_SIZE
    z = tl.load(qzeros_ptr + offs_n * stride_qzeros + group // 8, mask=mask_n, other=0)
    z = (z >> ((group % 8) * 4)) & 0xF
    s = tl.load(scales_ptr + offs_n * stride_scales + group, mask=mask_n, other=0.0)

    shifts = 4 * tl.arange(0, 8)
    q = tl.reshape((q[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_N, BLOCK_K))
    return _whole_tile_weights(q, z[:, None], s[:, None], BF16)  # [BLOCK_N, BLOCK_K]


# One packed word to 8 fp16 values in pairs (Marlin's trick, for the tl.dot paths): a LOP3 puts two
# nibbles 16 bits apart into the mantissas of an fp16x2 ``1024 + q``; the upper nibble of each
# byte lands as ``1024 + 16q``, which one exact f16x2 FMA by 1/16 brings back. The pairs stay as
# decoded: a = nibbles (0, 4), b = (1, 5), c = (2, 6), d = (3, 7), so the outputs are nibbles
# 0, 4, 1, 5, 2, 6, 3, 7 (``nibble_of_output``). In the GEMV layout that permutes K inside each
# word (the dot loads x in the same order); in the GEMM layout AutoAWQ's nibble order makes them
# columns 0..7 in order.
_DECODE_PAIRS = """
.reg .b32 w, a, b, c, d, m, e, k, o;
mov.b32 m, 0x000F000F;
mov.b32 e, 0x64006400;
mov.b32 k, 0x2C002C00;
lop3.b32 a, $8, m, e, 0xEA;
shr.u32 w, $8, 8;
lop3.b32 c, w, m, e, 0xEA;
shl.b32 m, m, 4;
lop3.b32 b, $8, m, e, 0xEA;
lop3.b32 d, w, m, e, 0xEA;
"""
_OUTPUT_PAIRS = """
mov.b32 {$0, $1}, a;
mov.b32 {$2, $3}, b;
mov.b32 {$4, $5}, c;
mov.b32 {$6, $7}, d;
"""
# ``1024 + q`` (the GEMM layout, whose zero and scale change along the word): 7 instructions.
_WORD_TO_F16_PTX: tl.constexpr = tl.constexpr("{" + _DECODE_PAIRS + """
mov.b32 o, 0x63806380;
fma.rn.f16x2 b, b, k, o;
fma.rn.f16x2 d, d, k, o;
""" + _OUTPUT_PAIRS + "}")
# ``(q - z) s`` with one zero and scale per word (the GEMV layout): an f16x2 subtract of ``1024 + z``
# (or the FMA by 1/16 with ``-(64 + z)``) leaves the exact ``q - z``, one f16x2 multiply rounds
# once, as AutoAWQ's ``(q - z) * s`` does: 13 instructions. Inputs: ``$9`` = fp16x2 bits of
# ``1024 + z``, ``$10`` = of ``-(64 + z)``, ``$11`` = of ``s``, both halves equal.
_DEQUANT8_F16_PTX: tl.constexpr = tl.constexpr("{" + _DECODE_PAIRS + """
sub.f16x2 a, a, $9;
fma.rn.f16x2 b, b, k, $10;
sub.f16x2 c, c, $9;
fma.rn.f16x2 d, d, k, $10;
mul.rn.f16x2 a, a, $11;
mul.rn.f16x2 b, b, $11;
mul.rn.f16x2 c, c, $11;
mul.rn.f16x2 d, d, $11;
""" + _OUTPUT_PAIRS + "}")


@triton.jit
def nibble_of_output(p):
    """The nibble of its word that element ``p`` of a decoded row holds (``p`` mod 8 ->
    0, 4, 1, 5, 2, 6, 3, 7)."""
    return (p % 2) * 4 + (p % 8) // 2


@triton.jit
def words_to_f16_reference(words):
    """``1024 + q`` (fp16) for the 8 nibbles ``q`` of each packed word, in the order 0, 4, 1, 5, 2, 6, 3, 7."""
    return (_f16_plus_1024(words & 0xF), _f16_plus_1024((words >> 16) & 0xF),
            _f16_plus_1024((words >> 4) & 0xF), _f16_plus_1024((words >> 20) & 0xF),
            _f16_plus_1024((words >> 8) & 0xF), _f16_plus_1024((words >> 24) & 0xF),
            _f16_plus_1024((words >> 12) & 0xF), _f16_plus_1024((words >> 28) & 0xF))


@triton.jit
def words_to_f16(words, USE_PTX: tl.constexpr):
    """``words_to_f16_reference``, in PTX on a GPU."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_WORD_TO_F16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words],
                                         dtype=(tl.float16, ) * 8, is_pure=True, pack=1)
    else:
        return words_to_f16_reference(words)


@triton.jit
def dequant8_f16(words, z, s, USE_PTX: tl.constexpr):
    """The 8 weights ``(q - z) * s`` (fp16) of each packed word in the order of ``words_to_f16``;
    ``z`` (int32) and ``s`` (fp16) broadcast to ``words``."""
    if USE_PTX:
        zp = (z | 0x6400) * 0x10001
        zn = ((z << 4) | 0xD400) * 0x10001
        sp = (s.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) * 0x10001
        return tl.inline_asm_elementwise(_DEQUANT8_F16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r",
                                         [words, zp, zn, sp], dtype=(tl.float16, ) * 8, is_pure=True, pack=1)
    else:
        zf = _f16_plus_1024(z)
        o0, o1, o2, o3, o4, o5, o6, o7 = words_to_f16_reference(words)
        return ((o0 - zf) * s, (o1 - zf) * s, (o2 - zf) * s, (o3 - zf) * s,
                (o4 - zf) * s, (o5 - zf) * s, (o6 - zf) * s, (o7 - zf) * s)


@triton.jit
def _tile8(o0, o1, o2, o3, o4, o5, o6, o7, ROWS: tl.constexpr, COLS: tl.constexpr):
    """``[ROWS, COLS]`` with word j's outputs ``o_c [ROWS, COLS / 8]`` at columns 8j + c."""
    # join(a, b) puts a new axis last: element [.., i, j, l] below is o_{4i + 2j + l}
    w = tl.join(tl.join(tl.join(o0, o4), tl.join(o2, o6)), tl.join(tl.join(o1, o5), tl.join(o3, o7)))
    return tl.reshape(w, (ROWS, COLS))


@triton.jit
def dequant_gemv_words_f16(q, z, s, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PTX: tl.constexpr):
    """fp16 weights ``[BLOCK_N, BLOCK_K]`` from the GEMV layout's words ``q [BLOCK_N, BLOCK_K / 8]``
    with one zero ``z`` (int32) and scale ``s`` (fp16) per row (``[BLOCK_N, 1]``: the tile lies in
    one group). Column ``p`` holds K column ``8 (p // 8) + nibble_of_output(p)``: the pairs stay as
    decoded, the caller permutes x."""
    o0, o1, o2, o3, o4, o5, o6, o7 = dequant8_f16(q, z, s, USE_PTX)
    return _tile8(o0, o1, o2, o3, o4, o5, o6, o7, BLOCK_N, BLOCK_K)


@triton.jit
def dequant_gemm_words_f16(q, zw, s, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, USE_PTX: tl.constexpr):
    """fp16 ``W[k, n]`` ``[BLOCK_K, BLOCK_N]`` from the GEMM layout's words ``q [BLOCK_K, BLOCK_N / 8]``,
    the zero words ``zw [BLOCK_N / 8]`` and scales ``s [BLOCK_N]`` (fp16) of the tile's group."""
    o0, o1, o2, o3, o4, o5, o6, o7 = words_to_f16(q, USE_PTX)
    w = _tile8(o0, o1, o2, o3, o4, o5, o6, o7, BLOCK_K, BLOCK_N)
    z0, z1, z2, z3, z4, z5, z6, z7 = words_to_f16(zw[None, :], USE_PTX)
    zf = _tile8(z0, z1, z2, z3, z4, z5, z6, z7, 1, BLOCK_N)
    return (w - zf) * s[None, :]  # (1024 + q) - (1024 + z) = q - z exactly; one rounding


# --- bf16 ----------------------------------------------------------------------------------

# One packed word to 8 bf16 values ``128 + q`` in pairs, in ``words_to_f16``'s order: a LOP3 puts
# the nibbles 16 bits apart into the mantissas of a bf16x2 with the exponent of 128 (bf16 has 7
# mantissa bits, so a nibble must sit in bits 0..3: three shifts bring the other pairs there).
_DECODE_PAIRS_BF16 = """
.reg .b32 w, a, b, c, d, m, e, one, nz;
mov.b32 m, 0x000F000F;
mov.b32 e, 0x43004300;
mov.b32 one, 0x3F803F80;
mov.b32 nz, 0x80008000;
lop3.b32 a, $8, m, e, 0xEA;
shr.u32 w, $8, 4;
lop3.b32 b, w, m, e, 0xEA;
shr.u32 w, $8, 8;
lop3.b32 c, w, m, e, 0xEA;
shr.u32 w, $8, 12;
lop3.b32 d, w, m, e, 0xEA;
"""
_WORD_TO_BF16_PTX: tl.constexpr = tl.constexpr("{" + _DECODE_PAIRS_BF16 + _OUTPUT_PAIRS + "}")
# ``(q - z) s`` with one zero and scale per word: ``(128 + q) * 1 - (128 + z)`` is the exact
# ``q - z``, ``* s - 0`` rounds once (FMAs: bf16x2 sub and mul need sm_90, FMA sm_80). Inputs:
# ``$9`` = bf16x2 bits of ``-(128 + z)``, ``$10`` = of ``s``, both halves equal.
_DEQUANT8_BF16_PTX: tl.constexpr = tl.constexpr("{" + _DECODE_PAIRS_BF16 + """
fma.rn.bf16x2 a, a, one, $9;
fma.rn.bf16x2 b, b, one, $9;
fma.rn.bf16x2 c, c, one, $9;
fma.rn.bf16x2 d, d, one, $9;
fma.rn.bf16x2 a, a, $10, nz;
fma.rn.bf16x2 b, b, $10, nz;
fma.rn.bf16x2 c, c, $10, nz;
fma.rn.bf16x2 d, d, $10, nz;
""" + _OUTPUT_PAIRS + "}")


@triton.jit
def _nibbles_in_output_order(words):
    """The 8 nibbles of each word as int32, in the order 0, 4, 1, 5, 2, 6, 3, 7."""
    return (words & 0xF, (words >> 16) & 0xF, (words >> 4) & 0xF, (words >> 20) & 0xF,
            (words >> 8) & 0xF, (words >> 24) & 0xF, (words >> 12) & 0xF, (words >> 28) & 0xF)


@triton.jit
def _scaled_bf16(q, z, s32, EMULATE: tl.constexpr):
    """``(q - z) * s32`` (int32 ``q``, ``z``; fp32 ``s32`` holding a bf16 value) rounded once to bf16."""
    return as_bf16((q - z).to(tl.float32) * s32, EMULATE)


@triton.jit
def dequant8_bf16(words, z, s, USE_PTX: tl.constexpr, EMULATE: tl.constexpr):
    """``dequant8_f16`` in bf16: the 8 weights ``(q - z) * bf16(s)`` of each packed word, each
    rounded once, in the order of ``words_to_f16``; ``z`` (int32) and ``s`` broadcast to ``words``."""
    if USE_PTX:
        zn = (0xC300 + z) * 0x10001  # -(128 + z): the ulp of 128 is 1
        sp = (as_bf16(s, False).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) * 0x10001
        return tl.inline_asm_elementwise(_DEQUANT8_BF16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r",
                                         [words, zn, sp], dtype=(tl.bfloat16, ) * 8, is_pure=True, pack=1)
    else:
        s32 = bf16_in_f32(s.to(tl.float32))
        q0, q1, q2, q3, q4, q5, q6, q7 = _nibbles_in_output_order(words)
        return (_scaled_bf16(q0, z, s32, EMULATE), _scaled_bf16(q1, z, s32, EMULATE),
                _scaled_bf16(q2, z, s32, EMULATE), _scaled_bf16(q3, z, s32, EMULATE),
                _scaled_bf16(q4, z, s32, EMULATE), _scaled_bf16(q5, z, s32, EMULATE),
                _scaled_bf16(q6, z, s32, EMULATE), _scaled_bf16(q7, z, s32, EMULATE))


@triton.jit
def words_to_bf16(words):
    """``128 + q`` (bf16) for the 8 nibbles ``q`` of each packed word, in ``words_to_f16``'s order (PTX)."""
    return tl.inline_asm_elementwise(_WORD_TO_BF16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words],
                                     dtype=(tl.bfloat16, ) * 8, is_pure=True, pack=1)


@triton.jit
def dequant_gemv_words(q, z, s, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BF16: tl.constexpr,
                       USE_PTX: tl.constexpr, EMULATE: tl.constexpr):
    """``dequant_gemv_words_f16`` (``s`` in any float type), or in bf16 (``BF16``)."""
    if BF16:
        o0, o1, o2, o3, o4, o5, o6, o7 = dequant8_bf16(q, z, s, USE_PTX, EMULATE)
        return _tile8(o0, o1, o2, o3, o4, o5, o6, o7, BLOCK_N, BLOCK_K)
    else:
        return dequant_gemv_words_f16(q, z, s.to(tl.float16), BLOCK_N, BLOCK_K, USE_PTX)


@triton.jit
def dequant_gemm_words(q, zw, s, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BF16: tl.constexpr,
                       USE_PTX: tl.constexpr, EMULATE: tl.constexpr):
    """``dequant_gemm_words_f16`` (``s`` in any float type), or in bf16 (``BF16``): the zero
    changes along the word here, so ``128 + q`` and ``128 + z`` are decoded apart and
    ``((128 + q) - (128 + z)) * s`` rounds once."""
    if not BF16:
        return dequant_gemm_words_f16(q, zw, s.to(tl.float16), BLOCK_K, BLOCK_N, USE_PTX)
    elif USE_PTX:
        o0, o1, o2, o3, o4, o5, o6, o7 = words_to_bf16(q)
        w = _tile8(o0, o1, o2, o3, o4, o5, o6, o7, BLOCK_K, BLOCK_N)
        z0, z1, z2, z3, z4, z5, z6, z7 = words_to_bf16(zw[None, :])
        zf = _tile8(z0, z1, z2, z3, z4, z5, z6, z7, 1, BLOCK_N)
        return (w - zf) * as_bf16(s, False)[None, :]
    else:
        q0, q1, q2, q3, q4, q5, q6, q7 = _nibbles_in_output_order(q)
        w = _tile8(q0, q1, q2, q3, q4, q5, q6, q7, BLOCK_K, BLOCK_N)
        z0, z1, z2, z3, z4, z5, z6, z7 = _nibbles_in_output_order(zw[None, :])
        z = _tile8(z0, z1, z2, z3, z4, z5, z6, z7, 1, BLOCK_N)
        return _scaled_bf16(w, z, bf16_in_f32(s.to(tl.float32))[None, :], EMULATE)
