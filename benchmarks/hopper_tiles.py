"""The Gluon wgmma tile (``kernels/hopper.py``) on an sm_90 GPU: correctness, then its tiles timed
beside fp16 cuBLAS and this library's current dispatch (``awq_linear``, GEMV layout), one M at a time.

    python -m benchmarks.hopper_tiles --out /tmp/hopper [--shapes two] [--ms 16 32 ... 4096]
    python -m benchmarks.hopper_tiles --out /tmp/hopper --sweep [--ship] [--shapes all]

``--sweep``: at each M bucket from 2 to 4096 (``--ms``), every tile of ``benchmarks.kernels.wgmma_sweep_configs``
against what the dispatch runs now (the incumbent: the tuned tile or dequantize + cuBLAS); where
the best wgmma tile wins, it goes into the measured tiles with ``path: "wgmma"`` (the user's
overlay, or with ``--ship`` the package's file for this GPU model) and ``auto`` takes it from the
next call on. Where it loses, nothing is written.

Correctness: each tile at awkward sizes (M and N not multiples of the tile, group 64 and 128)
against a float64 reference; the table's relative errors come from the same comparison.
Timing as in ``benchmarks.kernels``: CUDA-graph replays rotating over enough weight copies that
none is served from L2; each time is the median per call.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.bench.timing import copies_to_evict_l2, copy_bandwidth, time_graph
from awq_kernel_select.kernels import awq_linear
from awq_kernel_select.kernels.hopper import HopperConfig, awq_hopper_matmul
from awq_kernel_select.kernels.matmul import MatmulConfig
from benchmarks import peers
from benchmarks.kernels import SHAPE_SETS, make_layer, packed_bytes, rel_err, wgmma_sweep_configs

# the table's tiles: w_first ones for few tokens (their M side padded to 16 or 32), the same
# decoding into wgmma's A registers (a_regs), then the 64- and 128-token ones; a tile is timed
# only where M fits it without more than half padding
TILES = [HopperConfig(16, 128, 64, 2, 4, 4, True), HopperConfig(16, 256, 64, 3, 8, 4, True),
         HopperConfig(32, 128, 64, 2, 4, 4, True), HopperConfig(32, 128, 64, 3, 4, 2, True),
         HopperConfig(64, 128, 64, 2, 4, 2, True),
         HopperConfig(16, 128, 64, 2, 4, 4, True, True), HopperConfig(16, 256, 64, 2, 8, 4, True, True),
         HopperConfig(32, 128, 64, 3, 4, 4, True, True), HopperConfig(64, 128, 64, 2, 4, 2, True, True),
         HopperConfig(64, 256, 64, 2, 8, 2, True, True), HopperConfig(16, 128, 128, 2, 4, 4, True, True),
         HopperConfig(32, 256, 128, 2, 8, 4, True, True),
         HopperConfig(64, 128, 64, 2, 4), HopperConfig(64, 128, 64, 3, 4, 2), HopperConfig(64, 256, 64, 2, 4),
         HopperConfig(128, 128, 64, 2, 8), HopperConfig(128, 256, 64, 2, 8), HopperConfig(128, 128, 64, 3, 8)]
MS = [8, 16, 32, 64, 128, 256, 1024, 4096]
SWEEP_MS = [2, 4, *MS]  # at 2 and 4 tokens the 8-token A-register tiles against the pair paths


def fits(cfg: HopperConfig, m: int) -> bool:
    """A tile worth timing at M: at most half of its token side padding, or M above it."""
    return m > cfg.block_m // 2


def runs(cfg: HopperConfig, group_size: int) -> bool:
    """The tile can take this group size (its K step divides it)."""
    try:
        cfg.check(group_size)
    except ValueError:
        return False
    return True


def hopper_op(packed: L.PackedWeights, cfg: HopperConfig,
              bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: awq_hopper_matmul(x, packed.qweight, packed.qzeros, packed.scales, packed.group_size, cfg, bias)


def check(out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for k, n, g in [(512, 1000, 128), (1024, 384, 64), (4096, 11008, 128)]:
        q, z, s = make_layer(k, n, g, seed=7)
        packed = L.pack(q, z, s, g, "gemv")
        ref_w = L.dequantize(L.pack(q, z, s, g, "gemm"), torch.float64)
        for m, dtype in itertools.product((9, 16, 33, 64, 130), (torch.float16, torch.bfloat16)):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            ref = x.double() @ ref_w.t()
            dense = rel_err(torch.nn.functional.linear(x, ref_w.to(dtype)), ref)
            for cfg in (c for c in TILES if runs(c, g)):
                err = rel_err(hopper_op(packed, cfg)(x), ref)
                rows.append({"K": k, "N": n, "G": g, "M": m, "dtype": str(dtype), "tile": str(cfg), "rel_err": err,
                             "dense_rel_err": dense})
                print(f"check {k}x{n} g{g} M={m} {dtype} {cfg}: {err:.2e} (dense F.linear {dense:.2e})", flush=True)
        bias = torch.randn(n, device="cuda", dtype=torch.float16)
        x = torch.randn(40, k, device="cuda", dtype=torch.float16)
        kinds: dict[tuple[bool, bool], HopperConfig] = {}  # a split tile of each kind: w_first, a_regs, neither
        for c in TILES:
            if c.split_k > 1 and runs(c, g):
                kinds.setdefault((c.w_first, c.a_regs), c)
        for cfg in kinds.values():
            err = rel_err(hopper_op(packed, cfg, bias)(x), x.double() @ ref_w.t() + bias.double())
            rows.append({"K": k, "N": n, "G": g, "M": 40, "tile": str(cfg), "bias": True, "rel_err": err})
            print(f"check {k}x{n} g{g} M=40 with bias {cfg}: {err:.2e}", flush=True)
    (out_dir / "check.json").write_text(json.dumps(rows, indent=1))
    return rows


def table(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    bandwidth = copy_bandwidth()
    for k, n in SHAPE_SETS[args.shapes]:
        copies = copies_to_evict_l2(packed_bytes(k, n, 128))
        layers = [make_layer(k, n, 128, seed) for seed in range(copies)]
        packs = [L.pack(*layer, 128, "gemv") for layer in layers]
        dense = [peers.dense_linear(*layer, 128, torch.float16) for layer in layers[: copies_to_evict_l2(k * n * 2)]]
        floor = packed_bytes(k, n, 128) / bandwidth * 1e6
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ops: dict[str, list[Any]] = {
                "fp16": [lambda op=op: op(x) for op in dense],
                "ours_auto": [lambda p=p: awq_linear(x, p, None) for p in packs]}
            for cfg in TILES:
                if fits(cfg, m):
                    ops[str(cfg)] = [lambda p=p, c=cfg: hopper_op(p, c)(x) for p in packs]
            line = {"K": k, "N": n, "M": m, "floor_us": floor}
            for name, calls in ops.items():
                try:
                    line[name] = time_graph(calls, reps=args.reps).median_us
                except Exception as exc:  # one tile failing at one size is reported, not fatal
                    line[name] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(line)
            times = {key: v for key, v in line.items() if isinstance(v, float) and key not in ("floor_us", "fp16")}
            best = min(times, key=times.__getitem__)
            print(f"{k}x{n} M={m}: fp16 {line['fp16']:.1f} us, auto {line['ours_auto']:.1f} "
                  f"({line['fp16'] / line['ours_auto']:.2f}x), best {best} {times[best]:.1f} "
                  f"({line['fp16'] / times[best]:.2f}x), floor {floor:.1f}", flush=True)
            (out_dir / "table.json").write_text(json.dumps(rows, indent=1))
        del layers, packs, dense
        torch.cuda.empty_cache()
    return rows


def sweep(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    from awq_kernel_select.detect import cuda_device
    from awq_kernel_select.measured import cache_path, save_measurement, shipped_file

    gpu = cuda_device(torch.cuda.current_device())
    assert gpu.capability is not None
    target = shipped_file(gpu.name) if args.ship else cache_path()
    rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for k, n in SHAPE_SETS[args.shapes]:
        copies = copies_to_evict_l2(packed_bytes(k, n, args.group))
        packs = [L.pack(*make_layer(k, n, args.group, seed), args.group, "gemv") for seed in range(copies)]
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            incumbent = time_graph([lambda p=p: awq_linear(x, p, None) for p in packs], reps=10, warmup=2).median_us
            timed: dict[MatmulConfig, float] = {}
            for cfg in wgmma_sweep_configs(m, args.group):
                try:
                    timed[cfg] = time_graph(
                        [lambda p=p, c=cfg: awq_linear(x, p, None, path="wgmma", config=c) for p in packs],
                        reps=10, warmup=2).median_us
                except Exception as exc:  # a tile failing at one shape is reported, not fatal
                    print(f"  {HopperConfig.from_matmul(cfg)}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            if not timed:
                continue
            best = min(timed, key=timed.__getitem__)
            top = sorted(timed.items(), key=lambda kv: kv[1])[:4]
            line = {"K": k, "N": n, "M": m, "incumbent_us": incumbent, "best": str(HopperConfig.from_matmul(best)),
                    "best_us": timed[best], "top": [(str(HopperConfig.from_matmul(c)), t) for c, t in top]}
            rows.append(line)
            print(json.dumps(line), flush=True)
            if timed[best] < incumbent:
                entries.append({"layout": "gemv", "K": k, "N": n, "G": args.group, "M": m, "us": round(timed[best], 2),
                                "path": "wgmma", "config": dataclasses.asdict(best)})
        (out_dir / "sweep.json").write_text(json.dumps(rows, indent=1))
        if entries:  # after every shape, so that partial results survive
            save_measurement(gpu.name, (gpu.capability.major, gpu.capability.minor),
                             multiprocessors=gpu.multiprocessors, tiles=entries, path=target,
                             source=f"python -m benchmarks.hopper_tiles --sweep (group {args.group}) on an "
                                    f"{gpu.name}, {time.strftime('%Y-%m-%d', time.gmtime())}")
    print(f"{len(entries)} wgmma tiles saved to {target}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="two", choices=sorted(SHAPE_SETS))
    parser.add_argument("--ms", type=int, nargs="+", help=f"default: {MS}, with --sweep {SWEEP_MS}")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="tune the wgmma tiles at M = 2..4096 (see above)")
    parser.add_argument("--ship", action="store_true", help="with --sweep: into the package's file for this GPU")
    parser.add_argument("--group", type=int, default=128)
    args = parser.parse_args()
    args.ms = args.ms or (SWEEP_MS if args.sweep else MS)
    args.out.mkdir(parents=True, exist_ok=True)
    print("device:", torch.cuda.get_device_name(0), flush=True)
    if args.sweep:
        sweep(args, args.out)
        return
    if not args.skip_check:
        check(args.out)
    table(args, args.out)


if __name__ == "__main__":
    main()
