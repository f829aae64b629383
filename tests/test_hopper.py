"""The Gluon wgmma tile (``kernels/hopper.py``) off the GPU.

Gluon kernels do not run under ``TRITON_INTERPRET``. What can be checked here is checked:
the decode's PTX, run instruction by instruction by a small model of the few opcodes it uses
(fp16 and bf16 rounding as the GPU does it), against ``(q - z) * s`` in float64; the order in
which ``_decode_tile`` joins the 8 outputs of a word, against K order; and the launcher's
checks. ``tests/test_sass.py`` compiles the kernel for sm_90 and checks its loop; the GPU
check is ``python -m benchmarks.hopper_tiles``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from awq_kernel_select.kernels.hopper import (_A_PAIR_BF16, _A_PAIR_F16, HopperConfig, _dequant8_ptx,
                                              awq_hopper_matmul, k_splits)

MASK32 = 0xFFFFFFFF


def _halves_to_float(bits: int, bf16: bool) -> tuple[float, float]:
    def half(h: int) -> float:
        if bf16:  # bf16 is the top half of an fp32
            return float(np.array([h << 16], dtype=np.uint32).view(np.float32)[0])
        return float(np.array([h], dtype=np.uint16).view(np.float16)[0])

    return half(bits & 0xFFFF), half(bits >> 16)


def _float_to_half_bits(v: float, bf16: bool) -> int:
    if bf16:  # round to nearest even, as the GPU's .rn does
        return int(torch.tensor([v], dtype=torch.float32).to(torch.bfloat16).view(torch.int16).item()) & 0xFFFF
    return int(np.array([v], dtype=np.float16).view(np.uint16)[0])


def _pairwise(a: int, b: int, op: str, bf16: bool) -> int:
    """An fp16x2 / bf16x2 ``sub`` or ``mul`` rounded once per half: the exact result of two
    16-bit floats is a float32 (their product and difference are exact there), rounded to 16 bits."""
    out = 0
    for shift, (x, y) in zip((0, 16), zip(_halves_to_float(a, bf16), _halves_to_float(b, bf16))):
        exact = np.float32(x) - np.float32(y) if op == "sub" else np.float32(x) * np.float32(y)
        out |= _float_to_half_bits(float(exact), bf16) << shift
    return out


def _prmt(a: int, b: int, sel: int) -> int:
    pool = (a | (b << 32)).to_bytes(8, "little")
    return int.from_bytes(bytes(pool[(sel >> (4 * i)) & 0x7] for i in range(4)), "little")


def run_ptx(ptx: str, inputs: dict[str, int], bf16: bool, outputs_n: int = 8) -> list[int]:
    """Run ``ptx`` (the decode's opcodes only) on 32-bit ``inputs`` ("$8" ...); the 16-bit outputs
    $0 .. $(outputs_n - 1)."""
    regs: dict[str, int] = dict(inputs)

    def val(token: str) -> int:
        token = token.strip()
        return int(token, 0) & MASK32 if token[0].isdigit() else regs[token]

    outputs: dict[str, int] = {}
    for line in ptx.replace("{", "\n").replace("}", "\n").splitlines():
        line = line.strip().rstrip(";")
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [t.strip() for t in rest.split(",")]
        if op == "mov.b32" and len(args) == 3:  # "mov.b32 $0, $1, v": v's low and high halves out
            outputs[args[0]], outputs[args[1]] = regs[args[2]] & 0xFFFF, regs[args[2]] >> 16
            continue
        if op == "mov.b32":
            regs[args[0]] = val(args[1])
        elif op == "shr.u32":
            regs[args[0]] = val(args[1]) >> val(args[2])
        elif op == "prmt.b32":
            regs[args[0]] = _prmt(val(args[1]), val(args[2]), val(args[3]))
        elif op == "lop3.b32":
            assert val(args[4]) == 0xEA, "the model knows (a & b) | c only"
            regs[args[0]] = (val(args[1]) & val(args[2])) | val(args[3])
        elif op in ("sub.rn.f16x2", "sub.rn.bf16x2", "mul.rn.f16x2", "mul.rn.bf16x2"):
            regs[args[0]] = _pairwise(val(args[1]), val(args[2]), op.split(".")[0], bf16)
        else:
            raise AssertionError(f"opcode {op} is not modelled")
    return [outputs[f"${i}"] for i in range(outputs_n)]


def _split_output_moves(ptx: str) -> str:
    """``mov.b32 {$0, $1}, v;`` -> ``mov.b32 $0, $1, v`` (what ``run_ptx`` reads)."""
    return re.sub(r"mov\.b32 \{(\$\d+), (\$\d+)\}, (\w+);", r"mov.b32 \1, \2, \3;", ptx)


def _random_words(seed: int, bf16: bool) -> Iterator[tuple[list[int], int, float, int]]:
    """200 random words: their 8 nibbles q (in K order), a zero z, a scale s that fp16 holds (and,
    for ``bf16``, rounded to bf16), and the packed word."""
    gen = np.random.default_rng(seed)
    for _ in range(200):
        q = [int(v) for v in gen.integers(0, 16, 8)]
        z = int(gen.integers(0, 16))
        s = torch.tensor(gen.uniform(-0.05, 0.05)).to(torch.float16).to(torch.bfloat16 if bf16 else torch.float16)
        yield q, z, float(s), sum(v << (4 * i) for i, v in enumerate(q))


def _rounded_once(q: int, z: int, s: float, bf16: bool) -> float:
    """``(q - z) * s`` exact, rounded once to fp16 or bf16."""
    return float(torch.tensor((q - z) * s, dtype=torch.float64).to(torch.bfloat16 if bf16 else torch.float16))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp16", "bf16"])
def test_the_decode_ptx_gives_q_minus_z_times_s_in_k_order(bf16: bool) -> None:
    ptx = _split_output_moves(_dequant8_ptx(bf16))
    assert ptx.count("mov.b32 $") == 4, "four pairs out"
    for q, z, s, word in _random_words(0, bf16):
        magic = 0x4300 if bf16 else 0x6400
        zz = (magic | z) * 0x10001
        ss = _float_to_half_bits(s, bf16) * 0x10001
        out = run_ptx(ptx, {"$8": word, "$9": zz, "$10": ss}, bf16)
        got = [_halves_to_float(bits, bf16)[0] for bits in out]
        assert got == [_rounded_once(v, z, s, bf16) for v in q], (q, z, s)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp16", "bf16"])
def test_the_a_register_decode_gives_pair_p_of_each_word(bf16: bool) -> None:
    """``a_regs``: pair p of a word (PRMT selector as ``_decode_pair`` makes it, zero bits as
    ``_a_zero_bits``) is ``(q - z) * s`` of K 2p and 2p + 1, each rounded once."""
    ptx = _split_output_moves((_A_PAIR_BF16 if bf16 else _A_PAIR_F16).value)
    for q, z, s, word in _random_words(1, bf16):
        zz = (0x4300 | z) * 0x10001 if bf16 else (0x6400 | z) | ((0x5400 | (z << 4)) << 16)
        for p in range(4):
            sel = 0x4400 + p * 0x1111 if bf16 else p * 0x1111
            out = run_ptx(ptx, {"$2": word, "$3": sel, "$4": zz, "$5": _float_to_half_bits(s, bf16) * 0x10001}, bf16,
                          outputs_n=2)
            got = [_halves_to_float(bits, bf16)[0] for bits in out]
            assert got == [_rounded_once(q[2 * p + h], z, s, bf16) for h in (0, 1)], (q, z, s, p)


def test_decode_tile_joins_each_words_outputs_in_k_order() -> None:
    """``_decode_tile``'s joins on outputs o_0..o_7 of each word: column 8j + i of the tile must
    hold o_i of word j (torch.stack on a new last axis is Triton's ``join``)."""
    rows, words = 3, 4
    outs = [torch.arange(rows * words).reshape(rows, words) * 8 + i for i in range(8)]
    o0, o1, o2, o3, o4, o5, o6, o7 = outs

    def join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack((a, b), dim=-1)

    w = join(join(join(o0, o4), join(o2, o6)), join(join(o1, o5), join(o3, o7))).reshape(rows, words * 8)
    assert torch.equal(w, torch.arange(rows * words * 8).reshape(rows, words * 8))


@pytest.mark.parametrize("cfg, message", [
    (HopperConfig(block_m=32), "block_m"),
    (HopperConfig(block_n=72 + 1), "block_n"),
    (HopperConfig(block_k=256), "block_k"),
    (HopperConfig(block_m=12, w_first=True), "block_m .*multiple of 8"),
    (HopperConfig(block_m=16, block_n=96, w_first=True), "block_n .*16 rows per warp"),
    (HopperConfig(a_regs=True), "a_regs .*only with w_first"),
    (HopperConfig(128, 256, 128, 3, 8), "needs 368 KiB of shared memory"),
])
def test_tile_checks_name_the_field(cfg: HopperConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cfg.check(128)


def test_the_launcher_refuses_fp32_x_before_launching() -> None:
    x = torch.zeros(16, 128, dtype=torch.float32)
    q = torch.zeros(64, 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="fp16 or bf16"):
        awq_hopper_matmul(x, q, torch.zeros(64, 1, dtype=torch.int32), torch.zeros(64, 8, dtype=torch.float16), 128)


@pytest.mark.parametrize("a_regs", [False, True], ids=["smem", "a_regs"])
def test_splits_cover_k_and_start_a_regs_trips_on_even_steps(a_regs: bool) -> None:
    """Every step in exactly one split, no split empty, at most the splits asked for; with
    ``a_regs`` every split starts on an even step (its trips' two steps share a group)."""
    for steps, asked in itertools.product((1, 2, 7, 32, 33, 86, 172), (1, 2, 3, 4, 8, 16)):
        k_iters, splits = k_splits(steps, HopperConfig(16, 128, 64, 2, 4, asked, True, a_regs))
        starts = [s * k_iters for s in range(splits)]
        assert splits <= asked and starts[-1] < steps <= splits * k_iters, (steps, asked, k_iters, splits)
        assert not a_regs or k_iters % 2 == 0, (steps, asked, k_iters)
