"""Instructions per weight in the inner loop of the kernels, counted in SASS; no GPU needed.

Compiles a kernel for sm_90 with the ptxas that ships with Triton, disassembles it with
nvdisasm, takes the longest loop (the K loop) and divides its instruction count by the weights
one thread handles per iteration. At M = 1 the kernels have to stream about 23 weights per clock
per SM to reach the H100's bandwidth, and an SM issues 128 thread-instructions per clock, so
this count bounds the bandwidth a kernel can reach::

    python -m benchmarks.sass_per_weight                      # both layouts, a few tiles
    python -m benchmarks.sass_per_weight --no-ptx             # the same arithmetic in plain Triton
    python -m benchmarks.sass_per_weight --dtype bf16         # bf16 activations

Counts come from the local Triton (the GPU machine may run another version).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource

from awq_kernel_select.kernels import hopper, matmul

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SIGNATURE = {
    "x_ptr": "*fp16", "qweight_ptr": "*i32", "qzeros_ptr": "*i32", "scales_ptr": "*fp16", "bias_ptr": "*fp16",
    "out_ptr": "*fp16", "workspace_ptr": "*fp32", "tickets_ptr": "*i32",
    "M": "i32", "N": "i32", "K": "i32", "k_iters_per_split": "i32", "split_k": "i32",
    "stride_xm": "i32", "stride_qweight": "i32", "stride_qzeros": "i32", "stride_scales": "i32", "stride_om": "i32",
}
ALIGNED = (0, 1, 2, 3, 4, 5, 6, 7, 10, 13, 14, 15, 16, 17)  # pointers, K and strides: multiples of 16


def loop_counts(layout: str, cfg: matmul.MatmulConfig, use_ptx: bool,
                dtype: str = "fp16", tokens: int | None = None) -> tuple[int, collections.Counter[str]]:
    """Registers per thread and the opcode counts of the kernel's longest loop (``dtype``: x and
    the output; the pair paths as the launcher picks them for aligned layers; ``tokens``: how
    many of a four-token tile's tokens are dotted, default all)."""
    consts = dict(GROUP_SIZE=128, HAS_BIAS=False, USE_SPLIT_K=True, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  BLOCK_K=cfg.block_k, USE_PTX=use_ptx)
    consts.update(PREFETCH=cfg.prefetch, W_FIRST=cfg.w_first, PDL=False)
    if layout == "gemv":
        consts.update(EVEN_K=True, INTERLEAVE_K=cfg.interleave_k, SILU_MUL=False, EMULATE=False,
                      X_PAIRS=cfg.takes_pairs(True), TOKENS=tokens or cfg.block_m)
    else:
        consts.update(EVEN_N=True, EMULATE=False)
    kernel = matmul.awq_gemv_layout_kernel if layout == "gemv" else matmul.awq_gemm_layout_kernel
    signature = dict(SIGNATURE, x_ptr=f"*{dtype}", out_ptr=f"*{dtype}", bias_ptr=f"*{dtype}",
                     **{name: "constexpr" for name in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i in ALIGNED}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return _longest_loop(compiled.asm["cubin"])


def _longest_loop(cubin: bytes) -> tuple[int, collections.Counter[str]]:
    """Registers per thread and the opcode counts of the longest loop of a compiled kernel."""
    registers, body = _loop_sass(cubin)
    ops = collections.Counter(_opcode(m.group(2), line) for line in body
                              if (m := re.match(r"\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?([A-Z0-9_]+)", line)))
    return registers, ops


def _loop_sass(cubin: bytes) -> tuple[int, list[str]]:
    """Registers per thread and the SASS lines of the longest loop of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([str(BIN / "nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    body: list[str] = []
    for i, line in enumerate(lines):  # the longest backward branch is the K loop
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i and i + 1 - labels[m.group(1)] > len(body):
            body = lines[labels[m.group(1)]:i + 1]
    registers = re.search(r"REG:(\d+)", usage)
    return int(registers.group(1)) if registers else -1, body


def _opcode(name: str, line: str) -> str:
    """An instruction's opcode; a wgmma wait by how many wgmma groups it leaves in flight
    ("WARPGROUP.DEPBAR.LE gsb0, 0x1" -> WGMMA_WAIT_1)."""
    wait = re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x[0-9a-f]+)", line)
    return f"WGMMA_WAIT_{int(wait.group(1), 16)}" if wait else name


def hopper_loop_counts(cfg: hopper.HopperConfig, dtype: str = "fp16") -> tuple[int, collections.Counter[str]]:
    """``loop_counts`` for the Gluon wgmma tile (``kernels/hopper.py``), with split-K; with
    ``a_regs`` the loop holds two K steps (``hopper_steps_per_loop``)."""
    return _longest_loop(_hopper_cubin(cfg, dtype))


def hopper_loop_sass(cfg: hopper.HopperConfig, dtype: str = "fp16") -> list[str]:
    """The SASS lines of the wgmma tile's K loop."""
    return _loop_sass(_hopper_cubin(cfg, dtype))[1]


def hopper_steps_per_loop(cfg: hopper.HopperConfig) -> int:
    """K steps per trip of the wgmma tile's K loop: two with ``a_regs`` (the kernel unrolls it)."""
    return 2 if cfg.a_regs else 1


def _written_registers(line: str) -> set[int]:
    """The general registers an instruction writes: its first operand, 1, 2 (``.64``, ``.WIDE``)
    or 4 (``.128``) of them; none for stores, copies and branches (their first operand is an
    address or a label) or where it is a predicate."""
    m = re.match(r"\s*(?:/\*[0-9a-f]+\*/)?\s*(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)\s+R(\d+)\b", line)
    if m is None or m.group(1).split(".")[0] in ("STS", "STG", "ST", "LDGSTS", "RED", "ATOM"):
        return set()
    width = 4 if ".128" in m.group(1) else 2 if ".64" in m.group(1) or ".WIDE" in m.group(1) else 1
    return set(range(int(m.group(2)), int(m.group(2)) + width))


def a_register_hazards(body: list[str]) -> list[str]:
    """Instructions of a K loop that write a register an in-flight wgmma reads as its A operand.

    A wgmma group (HGMMAs up to the one marked ``gsb0``) reads its A registers (4 per HGMMA,
    from the one named second) until a ``WARPGROUP.DEPBAR.LE gsb0, 0x1`` after the next group
    retires it; the loop runs over and over, so the window wraps around its end. Empty where
    every group's A registers are left alone until then (PTX leaves writing them undefined)."""
    lines = [line for line in body if re.search(r"^\s*/\*[0-9a-f]+\*/", line)]
    groups: list[tuple[int, set[int]]] = []  # (index of the group's last HGMMA, its A registers)
    regs: set[int] = set()
    for i, line in enumerate(lines):
        m = re.search(r"HGMMA\.\S+ R\d+, R(\d+),", line)
        if m:
            regs |= set(range(int(m.group(1)), int(m.group(1)) + 4))
            if "gsb0" in line:
                groups.append((i, regs))
                regs = set()
    ends = {end for end, _ in groups}
    found = []
    for end, a_regs in groups:
        next_issued = False  # walk on from the group, around the loop, to the wait that retires it
        for step in range(1, len(lines) + 1):
            i = (end + step) % len(lines)
            if next_issued and "WARPGROUP.DEPBAR.LE gsb0, 0x1" in lines[i]:
                break
            next_issued = next_issued or i in ends
            if _written_registers(lines[i]) & a_regs:
                found.append(lines[i].strip())
    return found


def _hopper_cubin(cfg: hopper.HopperConfig, dtype: str) -> bytes:
    consts = dict(GROUP_SIZE=128, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, AHEAD=cfg.ahead,
                  USE_SPLIT_K=cfg.split_k > 1, HAS_BIAS=False, W_FIRST=cfg.w_first, A_REGS=cfg.a_regs)
    # the same arguments as the Triton kernels', in the same order
    signature = dict(SIGNATURE, x_ptr=f"*{dtype}", out_ptr=f"*{dtype}", bias_ptr=f"*{dtype}",
                     **{name: "constexpr" for name in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i in ALIGNED}
    compiled = triton.compile(GluonASTSource(fn=hopper.awq_hopper_kernel, signature=signature, constexprs=consts,
                                             attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=cfg.num_warps))
    cubin: bytes = compiled.asm["cubin"]
    return cubin


#: (layout, tile[, tokens dotted]): the tiles counted
TILES: list[tuple[str, matmul.MatmulConfig] | tuple[str, matmul.MatmulConfig, int]] = [
    ("gemv", matmul.MatmulConfig(1, 128, 128, 8, 4, 3)),
    ("gemv", matmul.MatmulConfig(1, 256, 128, 8, 8, 3)),
    ("gemv", matmul.MatmulConfig(1, 256, 128, 8, 8, 3, prefetch=True)),
    # the shipped M = 1 tiles (fp16 x: words and x in fp16x2, two words per step)
    ("gemv", matmul.MatmulConfig(1, 64, 128, 8, 4, 3, prefetch=True, interleave_k=True)),
    ("gemv", matmul.MatmulConfig(1, 128, 128, 8, 8, 3, interleave_k=True)),
    ("gemv", matmul.MatmulConfig(2, 256, 128, 8, 4, 3)),  # two tokens: per weight, not per weight and token
    ("gemv", matmul.MatmulConfig(2, 64, 128, 8, 4, 3)),
    ("gemv", matmul.MatmulConfig(2, 128, 128, 8, 4, 3)),
    ("gemv", matmul.MatmulConfig(4, 128, 128, 8, 4, 3, prefetch=True)),  # four tokens: the shipped M = 4 tiles
    ("gemv", matmul.MatmulConfig(4, 128, 128, 8, 4, 3, prefetch=True), 3),  # the same tile at M = 3
    ("gemm", matmul.MatmulConfig(1, 256, 32, 8, 4, 3)),
    ("gemm", matmul.MatmulConfig(1, 256, 64, 8, 4, 3)),
    # 16-row tl.dot (M = 2..16), words decoded in fp16x2 pairs: per weight, all 16 tokens
    ("gemv", matmul.MatmulConfig(16, 64, 128, 8, 4, 1, w_first=True)),
    ("gemv", matmul.MatmulConfig(16, 128, 128, 8, 8, 1, w_first=True, prefetch=True)),
    ("gemm", matmul.MatmulConfig(16, 64, 128, 8, 4, 1)),
    ("gemm", matmul.MatmulConfig(16, 64, 128, 8, 4, 1, w_first=True, prefetch=True)),
]


#: the Gluon wgmma tiles counted (``kernels/hopper.py``)
HOPPER_TILES = [hopper.HopperConfig(64, 128, 64, 2, 4), hopper.HopperConfig(128, 128, 64, 2, 8),
                hopper.HopperConfig(64, 128, 64, 2, 4, 2), hopper.HopperConfig(16, 128, 64, 2, 4, 4, w_first=True),
                hopper.HopperConfig(32, 128, 64, 3, 4, 4, w_first=True),
                hopper.HopperConfig(16, 128, 64, 2, 4, 4, w_first=True, a_regs=True),
                hopper.HopperConfig(32, 128, 64, 3, 4, 4, w_first=True, a_regs=True),
                hopper.HopperConfig(16, 256, 64, 2, 8, 4, w_first=True, a_regs=True),
                hopper.HopperConfig(16, 128, 128, 2, 4, 4, w_first=True),
                hopper.HopperConfig(16, 128, 128, 2, 4, 4, w_first=True, a_regs=True),
                hopper.HopperConfig(64, 128, 128, 2, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-ptx", action="store_true", help="the plain-Triton arithmetic instead of the PTX helpers")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="the activations' dtype")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_90, {'plain Triton' if args.no_ptx else 'PTX helpers'}, {args.dtype} x")
    print("| layout | tile | registers | loop instructions | per weight | top opcodes |")
    print("|---|---|---|---|---|---|")
    for layout, cfg, *dotted in TILES:
        tokens = dotted[0] if dotted else None
        tile = f"{cfg} ({tokens} tokens)" if tokens else str(cfg)
        _print_row(layout, tile, cfg.block_n * cfg.block_k / (32 * cfg.num_warps),
                   *loop_counts(layout, cfg, not args.no_ptx, args.dtype, tokens))
    for hcfg in HOPPER_TILES:
        _print_row("gemv (wgmma)", str(hcfg),
                   hcfg.block_n * hcfg.block_k / (32 * hcfg.num_warps) * hopper_steps_per_loop(hcfg),
                   *hopper_loop_counts(hcfg, args.dtype))


def _print_row(layout: str, tile: str, weights: float, registers: int, ops: collections.Counter[str]) -> None:
    """One table row; ``weights``: per thread and iteration, all of the tile's tokens."""
    total = sum(ops.values())
    top = " ".join(f"{op}:{n}" for op, n in ops.most_common(6))
    print(f"| {layout} | {tile} | {registers} | {total} | {total / weights:.2f} | {top} |", flush=True)


if __name__ == "__main__":
    main()
