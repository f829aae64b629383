"""Kernel benchmark: this library's int4 paths vs fp16 cuBLAS, tinygemm, GemLite, AutoAWQ, floor.

Run on a GPU::

    python -m benchmarks.kernels --out docs/kernels            # the full table (a few minutes)
    python -m benchmarks.kernels --dtype bf16 --out /tmp/bf16  # the same with bf16 activations
    python -m benchmarks.kernels --sweep --out /tmp/sweep      # tile-configuration sweep

The sweep writes the best tiles per shape and M through ``awq_kernel_select.measured``'s one
writer: into the user's measured-facts overlay (used on this GPU model from the next call on), or
with ``--ship`` into the package's file for this GPU model (``awq_kernel_select/gpus/``).

Method: every layer is quantized to 4 bits with group size 128 from random normal weights (not
zeros); each contender runs the same integers, scales and zeros. Each time is the median over
CUDA-graph replays of a sequence of calls that rotates over enough weight copies (3x the 50 MB
L2) that no call is served from L2; per-call time = replay time / calls. The floor is the packed
bytes (weights, scales, zeros) over the measured device-to-device copy bandwidth (read + write).
Before timing, each contender's output at M = 1 and 16 is compared with a float64 reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.bench.timing import copies_to_evict_l2, copy_bandwidth, time_graph
from awq_kernel_select.kernels import awq_linear
from awq_kernel_select.kernels.dispatch import default_plan
from awq_kernel_select.kernels.hopper import HopperConfig
from awq_kernel_select.kernels.matmul import MatmulConfig, _geometry, pair_block_m
from benchmarks import peers
from benchmarks.report_kernels import write_report

SHAPES_7B = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K, N)
SHAPES_70B = [(8192, 8192), (8192, 28672), (28672, 8192)]
SHAPES_7B_FUSED = [(4096, 12288), (4096, 22016)]  # q/k/v and gate/up as one linear each (awq_kernel_select.fuse)
# SmolLM2-135M: q/o, k/v, gate/up, down, then q/k/v and gate/up fused (576 is no multiple of 128: --group 64)
SHAPES_SMOLLM2 = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 960), (576, 3072)]
SHAPE_SETS = {"all": SHAPES_7B + SHAPES_70B, "7b": SHAPES_7B, "70b": SHAPES_70B, "two": [(4096, 11008), (8192, 28672)],
              "7b-fused": SHAPES_7B_FUSED, "smollm2": SHAPES_SMOLLM2}
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
GROUP = 128  # the default group size (--group)


def make_layer(k: int, n: int, g: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
    return L.quantize_rtn(w, g)


def packed_bytes(k: int, n: int, g: int) -> int:
    return k * n // 2 + (k // g) * n * 2 + (k // g) * n // 2


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# "fp16" is the dense baseline: cuBLAS F.linear in the activations' dtype (bf16 with --dtype bf16);
# the key keeps its name so that reports and data files read the same in either dtype
CONTENDERS: dict[str, Callable[..., Any]] = {
    "fp16": peers.dense_linear,
    "ours_gemv_layout": peers.ours("gemv"),
    "ours_gemm_layout": peers.ours("gemm"),
    "ours_gemv_layout_pdl": peers.ours("gemv", pdl=True),
    "ours_gemm_layout:gemv": peers.ours("gemm", "gemv"),
    "ours_gemm_layout:gemm": peers.ours("gemm", "gemm"),
    "ours_gemm_layout:dequant": peers.ours("gemm", "dequant"),
    "ours_gemv_layout:wgmma": peers.ours("gemv", "wgmma"),
    "tinygemm": peers.tinygemm,
    "gemlite": peers.gemlite,
    "autoawq": peers.autoawq,
}
FORCED_RANGE = {"gemv": (1, 64), "gemm": (2, 4096), "dequant": (16, 4096), "wgmma": (8, 4096)}


def run_table(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    bandwidth = copy_bandwidth()
    print(f"device-to-device copy bandwidth: {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    shapes = SHAPE_SETS["two" if args.quick else args.shapes]
    ms = args.ms or (MS if not args.quick else [1, 16, 256, 1024])
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    dtype = DTYPES[args.dtype]
    for k, n in shapes:
        copies = copies_to_evict_l2(packed_bytes(k, n, args.group))
        layers = [make_layer(k, n, args.group, seed) for seed in range(copies)]
        fp16_copies = copies_to_evict_l2(k * n * 2)
        ref_w = L.dequantize(L.pack(*layers[0], args.group, "gemm"), torch.float64)
        floor_us = packed_bytes(k, n, args.group) / bandwidth * 1e6
        built: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
        for name, build in CONTENDERS.items():
            if args.only and name not in args.only:
                continue
            try:
                built[name] = [build(*layer, args.group, dtype) for layer in layers[: (fp16_copies if name == "fp16" else copies)]]
            except peers.Unavailable as exc:
                print(f"  {name}: unavailable: {exc}", flush=True)
                rows.append({"K": k, "N": n, "contender": name, "unavailable": str(exc)})
        # every contender at one M before the next M: side by side in time, so that a slow
        # clock after the compute-heavy M = 4096 calls cannot favour one contender
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            for name, ops in built.items():
                forced = name.split(":")[1] if ":" in name else None
                if forced and not FORCED_RANGE[forced][0] <= m <= FORCED_RANGE[forced][1]:
                    continue
                if m in (1, 16):
                    err = rel_err(ops[0](x), x.double() @ ref_w.t())
                    errors.append({"K": k, "N": n, "M": m, "contender": name, "rel_err": err})
                try:
                    timing = time_graph([lambda op=op: op(x) for op in ops], reps=args.reps)
                except Exception as exc:  # a peer failing at one size is reported, not fatal
                    rows.append({"K": k, "N": n, "M": m, "contender": name, "error": f"{type(exc).__name__}: {exc}"})
                    print(f"  {name} M={m}: {type(exc).__name__}: {exc}", flush=True)
                    continue
                rows.append({"K": k, "N": n, "M": m, "contender": name, "median_us": timing.median_us,
                             "p10_us": timing.p10_us, "p90_us": timing.p90_us, "floor_us": floor_us})
        del built
        torch.cuda.empty_cache()
        print(f"{k}x{n}: done ({copies} copies)", flush=True)
        # after every shape, so that a run cut short by a time limit still leaves its rows
        partial = {"bandwidth_Bps": bandwidth, "rows": rows, "errors": errors, "partial_through": f"{k}x{n}"}
        (out_dir / "kernels.partial.json.tmp").write_text(json.dumps(partial, indent=1))
        (out_dir / "kernels.partial.json.tmp").replace(out_dir / "kernels.partial.json")
    (out_dir / "kernels.partial.json").unlink(missing_ok=True)
    return {"bandwidth_Bps": bandwidth, "rows": rows, "errors": errors}


QUICK_SWEEP = False  # --quick-sweep: fewer stages and tile sizes
SWEEP_MATCH: list[str] = []  # --sweep-match: only tiles whose name contains each piece


def sweep_configs(m: int, g: int, layout: str, k: int | None = None) -> list[MatmulConfig]:
    """The tile shapes the sweep tries (split-K is a run-time argument: it costs no compile);
    with ``k``, also the tiles that take all of a short K in one or two steps."""
    configs = _sweep_configs(m, g, layout) + (_one_step_configs(m, k) if k is not None and layout == "gemv" else [])
    if SWEEP_MATCH:  # only the tiles whose name has every given piece, e.g. "/BK256/" "/IK"
        configs = [c for c in configs if all(piece in str(c) for piece in SWEEP_MATCH)]
    if QUICK_SWEEP:
        configs = [c for c in configs if c.num_stages == 3 and (c.block_m >= 16 or c.block_k >= min(g, 128))
                   and not (m > 16 and c.split_k == 1 and c.block_m >= 64 and c.num_warps == 8)]
    return configs


def distinct_at_shape(configs: list[MatmulConfig], layout: str, g: int, m: int, n: int, k: int) -> list[MatmulConfig]:
    """``configs`` less those that launch the same as an earlier one at this shape: a split of K
    past its tiles runs as the split without empty programs (``matmul._geometry``), so on small
    layers S16, S32 and S64 are often one launch, timed once. Tiles the kernel refuses here go too."""
    seen: set[MatmulConfig] = set()
    kept = []
    for cfg in configs:
        try:
            split = _geometry(cfg, layout == "gemv", g, m, n, k)[2]
        except ValueError:
            continue
        launch = dataclasses.replace(cfg, split_k=split)
        if launch not in seen:
            seen.add(launch)
            kept.append(cfg)
    return kept


def _one_step_configs(m: int, k: int) -> list[MatmulConfig]:
    """GEMV layout, one to four tokens, K of at most 2048 (small models: SmolLM2's 576 and 1536):
    tiles whose BLOCK_K covers K in one to four steps, on 16-64 rows, so that a program issues
    its loads at once instead of waiting on a long K loop, split in up to four where the columns
    alone make too few programs (spanning groups is allowed)."""
    if m > 4 or k > 2048:
        return []
    return [MatmulConfig(pair_block_m(m), bn, bk, split, 4, 3, prefetch=prefetch)
            for bk in (256, 512, 1024, 2048) if k / 4 < bk < 2 * k
            for bn in (16, 32, 64) if bn * bk // 8 <= 4096
            for prefetch in (False, True) for split in (1, 2, 4)]


def _sweep_configs(m: int, g: int, layout: str) -> list[MatmulConfig]:
    gemv = layout == "gemv"
    configs = []
    splits = (1, 2, 4, 8, 16)
    if m == 1 and not gemv:  # FMA, 8 nibbles on a third axis; fp32 registers ~ BLOCK_K x BLOCK_N
        for bn in (64, 128, 256):
            for bk in (32, 64, 128):
                for warps in (4, 8):
                    if bk > g or bk * bn > 4096 * warps:
                        continue
                    for stages in (2, 3):
                        configs += [MatmulConfig(1, bn, bk, split, warps, stages) for split in splits]
    if gemv and m <= 4:  # FMA, words decoded in pairs once for all tokens at M = 2, 4; rows per thread share x
        for bn in (64, 128, 256):
            for bk in (64, 128, 256):
                for warps in (4, 8):
                    if bn * bk // 8 > 1024 * warps or bn * bk // 8 < 128 * warps:
                        continue
                    options = (False, True)  # prefetch and interleave_k
                    configs += [MatmulConfig(pair_block_m(m), bn, bk, split, warps, 3, prefetch=prefetch,
                                             interleave_k=interleave)
                                for prefetch, interleave in itertools.product(options, options)
                                for split in ((4, 8, 16, 32, 64) if m == 1 else (2, 4, 8, 16, 32))]
    if gemv and 4 < m <= 8:  # FMA with all M tokens in one program, nibble by nibble
        bm = 8
        for bn in (32, 64, 128):
            for bk in (64, 128, 256):
                for warps in (4, 8):
                    if bm * bn * bk // 8 > 1024 * warps:
                        continue
                    for stages in (2, 3):
                        configs += [MatmulConfig(bm, bn, bk, split, warps, stages) for split in splits]
    if 1 < m <= 16:  # 16-row tl.dot on words decoded in fp16x2 pairs (256-column tiles never won)
        for bn, bk in ((64, 128), (128, 64), (128, 128)):
            for warps in (4, 8):
                if bk > g:
                    continue
                for stages in (1, 3):
                    for prefetch in (False, True):
                        for w_first in ((True,) if gemv else (False, True)):  # GEMV layout: W @ x^T measured faster
                            configs += [MatmulConfig(16, bn, bk, split, warps, stages, w_first, prefetch)
                                        for split in (2, 4, 8, 16, 32)]
    if 16 < m <= 128:  # batched decode: still memory-bound, so split-K keeps every SM streaming
        for bm in (16, 32, 64):
            for bn in (64, 128):
                bk = min(g, 128 if gemv else 64)
                for w_first in ((False, True) if gemv else (False,)):
                    configs += [MatmulConfig(bm, bn, bk, split, 4, 3, w_first) for split in (1, 2, 4, 8)]
    if m > 16:
        for bm in (64, 128):
            for bn in (64, 128):
                for warps in (4, 8):
                    for stages in (3, 4):
                        configs.append(MatmulConfig(bm, bn, min(g, 64), 1, warps, stages))
    return configs


def wgmma_sweep_configs(m: int, g: int) -> list[MatmulConfig]:
    """The Gluon wgmma tiles (``kernels/hopper.py``, GEMV layout, sm_90) tried at M, in the tables'
    form (``path: "wgmma"``). Below 8 tokens only the 8-token ``a_regs`` tiles (3.3-3.8 SASS
    instructions per weight, all tokens, against 3.3-5.0 for the pair paths' FMA tiles at M = 2-4).
    Up to 64 tokens ``w_first`` (the tokens on wgmma's N side, padded to a power of two from 8) on
    64-256 output columns, decoded into shared memory or (``a_regs``) into wgmma's A registers;
    from 32 tokens also 64 on wgmma's M side, from 128 also 128 on 8 warps; 2 or 3 steps in flight;
    K steps of 64, or 128 where registers and shared memory allow; split-K where the output tiles
    are few."""
    if g % 64:
        return []
    if m < 8:  # the 8-token A-register tiles only, against the pair paths' FMA tiles
        return [HopperConfig(8, bn, bk, 2, warps, split, w_first=True, a_regs=True).as_matmul()
                for bk in (64, 128) if g % bk == 0 for bn, warps in ((128, 4), (256, 8)) for split in (4, 8, 16)]
    configs = []
    if m <= 64:
        bm = max(8, 1 << (m - 1).bit_length())
        configs += [HopperConfig(bm, bn, 64, ahead, warps, split, w_first=True).as_matmul()
                    for bn, warps in ((64, 4), (128, 4), (256, 8)) for ahead in (2, 3) for split in (2, 4, 8, 16)]
        if g % 128 == 0:
            configs += [HopperConfig(bm, 128, 128, 2, 4, split, w_first=True).as_matmul() for split in (2, 4, 8, 16)]
        # decoded into the A registers: K steps of 64, and up to 32 tokens of 128 (up to 255 registers)
        configs += [HopperConfig(bm, bn, bk, ahead, warps, split, w_first=True, a_regs=True).as_matmul()
                    for bk in (64, 128) if g % bk == 0 and (bk == 64 or bm <= 32)
                    for bn, warps in ((128, 4), (256, 8)) for ahead in (2, 3) for split in (2, 4, 8, 16)]
    if m >= 32:
        shapes = [(64, 4)] + ([(128, 8)] if m >= 128 else [])
        configs += [HopperConfig(bm, bn, 64, ahead, warps, split).as_matmul()
                    for bm, warps in shapes for bn in (128, 256) for ahead in ((2,) if m <= 64 else (2, 3))
                    for split in ((1, 2, 4) if m <= 256 else (1,))]
        if g % 128 == 0:  # K steps of 128 (shared memory allows it on the 64-token tile)
            configs += [HopperConfig(64, 128, 128, 2, 4, split).as_matmul() for split in (1, 2, 4)]
    return configs


def run_sweep(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Time every configuration; save the best per (layout, K, N, G, M) as measured tiles."""
    from awq_kernel_select.detect import cuda_device
    from awq_kernel_select.kernels.dispatch import default_plan
    from awq_kernel_select.measured import cache_path, save_measurement, shipped_file

    gpu = cuda_device(torch.cuda.current_device())
    assert gpu.capability is not None
    target = shipped_file(gpu.name) if args.ship else cache_path()
    plan = default_plan(torch.device("cuda"))
    results, entries = [], []
    shapes = SHAPE_SETS[args.shapes]
    for k, n in shapes:
        copies = copies_to_evict_l2(packed_bytes(k, n, args.group))
        layers = [make_layer(k, n, args.group, seed) for seed in range(copies)]
        for layout in args.layouts:
            packed = [L.pack(*layer, args.group, layout) for layer in layers]
            for m in (args.sweep_ms if layout == "gemm" else args.sweep_ms_gemv or args.sweep_ms):
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                path = "gemv" if m <= 16 else "gemm"
                timings: dict[str, float] = {}
                best: tuple[float, MatmulConfig] | None = None
                for cfg in distinct_at_shape(sweep_configs(m, args.group, layout, k), layout, args.group, m, n, k):
                    try:
                        t = time_graph([lambda p=p, c=cfg: awq_linear(x, p, None, config=c, path=path)
                                        for p in packed], reps=10, warmup=2).median_us
                    except Exception as exc:
                        print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                        continue
                    timings[str(cfg)] = t
                    if best is None or t < best[0]:
                        best = (t, cfg)
                best_wgmma: tuple[float, MatmulConfig] | None = None
                for cfg in (wgmma_sweep_configs(m, args.group) if layout == "gemv" and m > 16 and plan.wgmma_capable
                            else []):
                    try:
                        t = time_graph([lambda p=p, c=cfg: awq_linear(x, p, None, config=c, path="wgmma")
                                        for p in packed], reps=10, warmup=2).median_us
                    except Exception as exc:
                        print(f"  wgmma {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                        continue
                    timings[f"wgmma {cfg}"] = t
                    if best_wgmma is None or t < best_wgmma[0]:
                        best_wgmma = (t, cfg)
                if m > 16:  # the alternative for large M: dequantize + cuBLAS
                    timings["dequant"] = time_graph([lambda p=p: awq_linear(x, p, None, path="dequant")
                                                     for p in packed], reps=10, warmup=2).median_us
                heuristic = plan.config_for(path, layout, m, n, k, args.group)
                top = sorted(timings.items(), key=lambda kv: kv[1])[:4]
                line = {"K": k, "N": n, "layout": layout, "M": m, "heuristic": str(heuristic),
                        "best_us": best[0] if best else None, "top": top}
                results.append(line)
                print(json.dumps(line), flush=True)
                if best_wgmma is not None and (best is None or best_wgmma[0] < best[0]):
                    entry = {"layout": layout, "K": k, "N": n, "G": args.group, "M": m,
                             "us": round(best_wgmma[0], 2), "config": dataclasses.asdict(best_wgmma[1]),
                             "path": "dequant" if timings["dequant"] < best_wgmma[0] else "wgmma"}
                    if entry["path"] == "dequant" and best is not None:  # the tl.dot tile for a forced "gemm"
                        entry.update(us=round(best[0], 2), config=dataclasses.asdict(best[1]))
                    entries.append(entry)
                elif best is not None:
                    cfg = best[1]
                    entry = {"layout": layout, "K": k, "N": n, "G": args.group, "M": m, "us": round(best[0], 2),
                             "config": dataclasses.asdict(cfg)}
                    if "dequant" in timings:  # which of the paths auto should take at this M
                        entry["path"] = "dequant" if timings["dequant"] < best[0] else "gemm"
                    entries.append(entry)
        # after every shape, so that partial results survive
        save_measurement(gpu.name, (gpu.capability.major, gpu.capability.minor), multiprocessors=gpu.multiprocessors,
                         tiles=entries, path=target,
                         source=f"python -m benchmarks.kernels --sweep (group {args.group}) on an {gpu.name}, "
                                f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    print(f"tiles saved to {target}", flush=True)
    return {"sweep": results, "tiles": entries, "saved_to": str(target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/kernels"))
    parser.add_argument("--sweep", action="store_true", help="sweep tile configurations instead")
    parser.add_argument("--sweep-ms", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--layouts", nargs="+", default=["gemm", "gemv"])
    parser.add_argument("--sweep-ms-gemv", type=int, nargs="*", help="M values for the GEMV layout")
    parser.add_argument("--shapes", default="all", choices=list(SHAPE_SETS), help="the layer shapes (table and sweep)")
    parser.add_argument("--quick", action="store_true", help="two shapes, four M")
    parser.add_argument("--ms", type=int, nargs="+", help="the table's M values (default: all)")
    parser.add_argument("--quick-sweep", action="store_true", help="fewer tile configurations")
    parser.add_argument("--sweep-match", nargs="*", default=[],
                        help="sweep only the tiles whose name contains each of these, e.g. /BK256/ /IK")
    parser.add_argument("--ship", action="store_true",
                        help="--sweep: save the tiles into the package's file for this GPU model, not the user's overlay")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--group", type=int, default=GROUP, help="quantization group size (64 for --shapes smollm2)")
    parser.add_argument("--only", nargs="*", help="contenders to run")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp16",
                        help="the activations' dtype (table only); the dense baseline uses it too")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    global QUICK_SWEEP, SWEEP_MATCH
    QUICK_SWEEP, SWEEP_MATCH = args.quick_sweep, args.sweep_match
    meta = {
        "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "autoawq_path": peers.autoawq_path_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "group_size": args.group, "dtype": args.dtype, "tile_table": default_plan(torch.device("cuda")).describe(),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    print(json.dumps(meta), flush=True)
    started = time.time()
    result = run_sweep(args, args.out) if args.sweep else run_table(args, args.out)
    result["meta"] = meta
    result["wall_s"] = time.time() - started
    name = "sweep.json" if args.sweep else "kernels.json"
    (args.out / name).write_text(json.dumps(result, indent=1))
    if not args.sweep:
        write_report(result, args.out)
    print(f"wrote {args.out / name} in {result['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
