"""Instructions per weight in the K loop of the pair paths, counted in SASS for sm_90 with the
ptxas and nvdisasm that ship with Triton (no GPU needed; ``benchmarks/sass_per_weight.py``).

At M = 1, 2 and 4 the kernels are bound by instructions, not bytes, on the H100's large layers
(docs/kernels.md): these counts are what set their speed, so a change that adds instructions
fails here before it reaches a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import triton

from awq_kernel_select.kernels.hopper import HopperConfig
from awq_kernel_select.kernels.matmul import MatmulConfig

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = pytest.mark.skipif(not (BIN / "nvdisasm").exists() or not (BIN / "ptxas").exists(),
                                reason="this Triton ships no ptxas/nvdisasm")

#: (tile, x dtype, tokens dotted, most instructions per weight; per weight for all tokens of a
#: program). The fp32 paths that the pair paths replaced counted 5.7 (bf16, one token) and 8.4
#: (two tokens).
BUDGETS = [
    (MatmulConfig(1, 64, 128, 8, 4, 3, prefetch=True, interleave_k=True), "fp16", 1, 3.4),
    (MatmulConfig(1, 64, 128, 8, 4, 3, prefetch=True, interleave_k=True), "bf16", 1, 3.9),
    (MatmulConfig(2, 64, 128, 8, 4, 3), "fp16", 2, 4.6),
    (MatmulConfig(2, 64, 128, 8, 4, 3), "bf16", 2, 5.3),
    (MatmulConfig(4, 128, 128, 8, 4, 3, prefetch=True), "fp16", 4, 6.0),  # the shipped M = 4 tiles: 5.7
    (MatmulConfig(4, 128, 128, 8, 4, 3, prefetch=True), "fp16", 3, 5.0),  # the same at M = 3: 4.8
]


_COUNT = """
import dataclasses, json, sys
from awq_kernel_select.kernels.hopper import HopperConfig
from awq_kernel_select.kernels.matmul import MatmulConfig
from benchmarks.sass_per_weight import loop_counts
for raw in json.loads(sys.argv[1]):
    cfg = MatmulConfig(**raw["cfg"])
    registers, ops = loop_counts("gemv", cfg, True, raw["dtype"], raw["tokens"])
    print(json.dumps({"registers": registers, "ops": dict(ops)}))
"""


@pytest.fixture(scope="module")
def counts() -> list[dict[str, object]]:
    """Each tile's registers and loop opcodes, compiled in one child process: the tests run the
    kernels under the interpreter (``TRITON_INTERPRET=1``), which cannot compile them."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    tiles = json.dumps([{"cfg": dataclasses.asdict(cfg), "dtype": dtype, "tokens": tokens}
                        for cfg, dtype, tokens, _ in BUDGETS])
    done = subprocess.run([sys.executable, "-c", _COUNT, tiles], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("index", range(len(BUDGETS)), ids=[f"{c}-{d}-{t}" for c, d, t, _ in BUDGETS])
def test_pair_paths_stay_within_their_instruction_budget(counts: list[dict[str, Any]], index: int) -> None:
    cfg, _, _, budget = BUDGETS[index]
    ops: dict[str, int] = counts[index]["ops"]
    per_weight = sum(ops.values()) / (cfg.block_n * cfg.block_k / (32 * cfg.num_warps))
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    assert per_weight <= budget, f"{per_weight:.2f} instructions per weight ({counts[index]['registers']} registers): {top}"
    assert "LDL" not in ops and "STL" not in ops, "registers spilled to local memory in the K loop"


_COUNT_HOPPER = """
import json, sys
from awq_kernel_select.kernels.hopper import HopperConfig
from benchmarks.sass_per_weight import a_register_hazards, hopper_loop_counts, hopper_loop_sass
for raw in json.loads(sys.argv[1]):
    cfg = HopperConfig(**raw["cfg"])
    registers, ops = hopper_loop_counts(cfg, raw["dtype"])
    hazards = a_register_hazards(hopper_loop_sass(cfg, raw["dtype"]))
    print(json.dumps({"registers": registers, "ops": dict(ops), "hazards": hazards}))
"""
#: the Gluon wgmma tile (kernels/hopper.py), fp16 and bf16, with the tokens on wgmma's N side
#: (w_first), and with the weights decoded into wgmma's A registers (a_regs), with the most
#: instructions per weight each may take (4.2-4.4 counted; a_regs 3.8, in bf16 4.3, with K steps
#: of 128 3.4)
HOPPER = [(HopperConfig(64, 128, 64, 2, 4, 2), "fp16", 4.6), (HopperConfig(64, 128, 64, 2, 4, 2), "bf16", 4.6),
          (HopperConfig(16, 128, 64, 2, 4, 4, w_first=True), "fp16", 4.6),
          (HopperConfig(16, 128, 64, 2, 4, 4, w_first=True, a_regs=True), "fp16", 4.0),
          (HopperConfig(32, 128, 64, 3, 4, 4, w_first=True, a_regs=True), "bf16", 4.5),
          (HopperConfig(16, 128, 128, 2, 4, 4, w_first=True, a_regs=True), "fp16", 3.6)]


@pytest.fixture(scope="module")
def hopper_counts() -> list[dict[str, Any]]:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    tiles = json.dumps([{"cfg": dataclasses.asdict(cfg), "dtype": dtype} for cfg, dtype, _ in HOPPER])
    done = subprocess.run([sys.executable, "-c", _COUNT_HOPPER, tiles], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("index", range(len(HOPPER)), ids=[f"{c}-{d}" for c, d, _ in HOPPER])
def test_the_wgmma_tile_overlaps_its_mma_with_the_next_decode(hopper_counts: list[dict[str, Any]],
                                                              index: int) -> None:
    """The K loop copies x and the words with cp.async (no register round trip), issues one
    wgmma per 16 of K and waits only for the one before (``WARPGROUP.DEPBAR.LE gsb0, 1``: the
    MMA runs on while the next step decodes), and decodes in ~4 instructions per weight. With
    ``a_regs`` the loop holds two steps, and no instruction writes a register that the wgmma
    still running reads as its A operand."""
    cfg, _, budget = HOPPER[index]
    ops: dict[str, int] = hopper_counts[index]["ops"]
    steps = 2 if cfg.a_regs else 1
    m_side = cfg.block_n if cfg.w_first else cfg.block_m  # 16 rows per warp: one wgmma per 64, per warp group
    assert ops.get("HGMMA") == steps * cfg.block_k // 16 * (m_side // (16 * cfg.num_warps)), ops
    assert ops.get("LDGSTS", 0) >= 2 * steps and ops.get("WGMMA_WAIT_1") == steps and "WGMMA_WAIT_0" not in ops, ops
    rows = 1 if not cfg.a_regs else cfg.block_n // (8 * cfg.num_warps)  # zero and scale rows per thread
    groups = 2 if cfg.a_regs and cfg.block_k == 128 else 1  # per loop trip (the counts are for group 128)
    assert ops.get("LDG", 0) <= 2 * rows * groups, f"only a zero and a scale per row and group are loaded: {ops}"
    per_weight = sum(ops.values()) / (steps * cfg.block_n * cfg.block_k / (32 * cfg.num_warps))
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    assert per_weight <= budget, f"{per_weight:.2f} instructions per weight: {top}"
    assert "LDL" not in ops and "STL" not in ops, "registers spilled to local memory in the K loop"
    assert hopper_counts[index]["hazards"] == [], "A registers written while their wgmma runs"
