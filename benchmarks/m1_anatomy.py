"""Where the time of the M = 1 GEMV-layout kernel goes, shape by shape (GPU).

Each shape is timed, in one run, as a ladder of kernels with the tuned kernel's own grid and
tile (``plan``), every rung adding one part of the real kernel:

* ``empty``: the grid launched, one store per program (launch and the gap between calls);
* ``read``: the packed words streamed tile by tile (``evict_first``, 16-byte loads), folded
  with XOR, one plain store per program and row: what reading the weights costs in this grid
  (``read_n_first``: the same with session 5's grid, (m, n, k) launch order and one stretch of
  K per split, where the programs running at one time read 64 bytes of many rows);
* ``read+atomics``: the same with the real split-K tail (fp32 atomics, ticket, read-back);
* ``ours``: the real kernel;
* ``stream``: the same bytes read by a flat 1-D grid of contiguous 16 KB-64 KB blocks (best
  of a few): what a Triton kernel reads in that time at best;

next to fp16 ``F.linear`` and the floor (packed bytes over the copy bandwidth). Same method as
benchmarks/kernels.py: CUDA-graph replays over enough weight copies that none is served from
L2, median of 30. Other modes: ``--read-tiles`` (the read rung for tile rows of 64-512 bytes),
``--ab`` (session 5's M = 1 tiles vs the shipped ones, timed in turn), ``--adopt SWEEP`` (the
best M = 1 tile of a sweep vs the shipped one, the faster written into the shipped table) and
``--ncu`` (each kernel launched once, for Nsight Compute)::

    python benchmarks/m1_anatomy.py --out /tmp/anatomy          # ~1 min on an H100
    ncu --clock-control none -k regex:awq_gemv_layout_kernel python benchmarks/m1_anatomy.py --ncu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peers  # noqa: E402
from kernels import GROUP, SHAPES_7B, SHAPES_70B, make_layer, packed_bytes  # noqa: E402

from awq_kernel_select import layouts as L  # noqa: E402
from awq_kernel_select.bench.timing import copies_to_evict_l2, copy_bandwidth, time_graph  # noqa: E402
from awq_kernel_select.kernels import awq_linear  # noqa: E402
from awq_kernel_select.kernels.dispatch import DEFAULT_DISPATCH, plan  # noqa: E402
from awq_kernel_select.kernels.matmul import MatmulConfig, _finish_split_k, _geometry, _workspace  # noqa: E402


@triton.jit
def read_tiles_kernel(q_ptr, out_ptr, workspace_ptr, tickets_ptr, N, K8, k8_per_split, split_k, stride_q,
                      BLOCK_N: tl.constexpr, BLOCK_K8: tl.constexpr, LOAD: tl.constexpr, ATOMICS: tl.constexpr,
                      K_FIRST: tl.constexpr):
    if K_FIRST:  # interleave_k: grid (k, 1, n), split s reads tiles s, s + split_k, ...
        pid_k = tl.program_id(0)
        pid_n = tl.program_id(2)
        k_start = pid_k * BLOCK_K8
        k_end = K8
        k_step = split_k * BLOCK_K8
    else:  # grid (1, n, k), split s reads one stretch of K (session 5)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        k_start = pid_k * k8_per_split
        k_end = tl.minimum(k_start + k8_per_split, K8)
        k_step = BLOCK_K8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N, BLOCK_K8), dtype=tl.int32)
    if LOAD:
        for k0 in range(k_start, k_end, k_step):
            offs_k = k0 + tl.arange(0, BLOCK_K8)
            acc ^= tl.load(q_ptr + offs_n[:, None] * stride_q + offs_k[None, :],
                           mask=mask_n[:, None] & (offs_k[None, :] < k_end), other=0, eviction_policy="evict_first")
    v = (tl.sum(acc, axis=1) & 0xFF).to(tl.float32)
    if ATOMICS:
        offs_m = tl.arange(0, 1)
        tl.atomic_add(workspace_ptr + offs_n[None, :] + offs_m[:, None] * N, v[None, :], mask=mask_n[None, :],
                      sem="relaxed")
        _finish_split_k(offs_m, offs_n, 1, N, out_ptr, workspace_ptr, tickets_ptr, pid_n, out_ptr, N, split_k, False,
                        1, BLOCK_N)
    else:
        tl.store(out_ptr + pid_k * N + offs_n, v.to(tl.float16), mask=mask_n)


@triton.jit
def stream_kernel(q_ptr, out_ptr, n_words, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(ITERS):
        offs = (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)
        acc ^= tl.load(q_ptr + offs, mask=offs < n_words, other=0, eviction_policy="evict_first")
    tl.store(out_ptr + pid, tl.sum(acc))


def ladder(q: torch.Tensor, n: int, k: int, cfg: MatmulConfig, load: bool, atomics: bool) -> torch.Tensor:
    """One rung with the kernel's grid, splits and K order for ``cfg`` (M = 1)."""
    grid, k_iters, split_k = _geometry(cfg, True, GROUP, 1, n, k)
    n_blocks = grid[2] if cfg.interleave_k else grid[1]
    bk8 = cfg.block_k // 8
    if atomics:
        out = torch.empty(1, n, dtype=torch.float16, device=q.device)
        ws, tickets = _workspace(q.device, 16, n, n_blocks)
    else:
        out = torch.empty(split_k, n, dtype=torch.float16, device=q.device)
        ws = tickets = out
    read_tiles_kernel[grid](q, out, ws, tickets, n, k // 8, k_iters * bk8, split_k, q.stride(0),
                            BLOCK_N=cfg.block_n, BLOCK_K8=bk8, LOAD=load, ATOMICS=atomics, K_FIRST=cfg.interleave_k,
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def stream(q: torch.Tensor, block: int, iters: int, warps: int) -> torch.Tensor:
    n_words = q.numel()
    programs = -(-n_words // (block * iters))
    out = torch.empty(programs, dtype=torch.int32, device=q.device)
    stream_kernel[(programs,)](q, out, n_words, BLOCK=block, ITERS=iters, num_warps=warps)
    return out


READ_TILES = [MatmulConfig(1, bn, bk, split, warps, 3, interleave_k=True) for bn, bk, split, warps in
              ((128, 128, 16, 4), (128, 256, 16, 4), (128, 256, 8, 4), (256, 256, 8, 8), (64, 256, 16, 4),
               (64, 512, 8, 4), (128, 512, 8, 8), (32, 1024, 4, 4))]


def read_tiles(shapes: list[tuple[int, int]], out: Path) -> None:
    """The ``read`` rung for tiles whose rows are 64 to 512 bytes long."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, n in shapes:
        packs = [L.pack(*make_layer(k, n, GROUP, s), GROUP, "gemv")
                 for s in range(copies_to_evict_l2(packed_bytes(k, n, GROUP)))]
        t = {}
        for cfg in READ_TILES:
            if k // cfg.block_k >= cfg.split_k:
                t[str(cfg)] = time_graph([lambda p=p, c=cfg: ladder(p.qweight, n, k, c, True, False)
                                          for p in packs]).median_us
        t["stream"] = time_graph([lambda p=p: stream(p.qweight, 4096, 1, 8) for p in packs]).median_us
        rows.append(dict(K=k, N=n, **t))
        print(f"{k}x{n}: " + ", ".join(f"{c} {us:.1f}" for c, us in t.items()), flush=True)
    (out / "read-tiles.json").write_text(json.dumps(rows, indent=1))


# The GEMV layout's tuned M = 1 tiles of session 5 (one stretch of K per split, grid (m, n, k))
SESSION5_M1 = {(4096, 4096): MatmulConfig(1, 256, 128, 32, 8, 3), (4096, 11008): MatmulConfig(1, 256, 128, 32, 8, 3),
               (11008, 4096): MatmulConfig(1, 256, 128, 16, 8, 3, prefetch=True),
               (8192, 8192): MatmulConfig(1, 256, 128, 8, 8, 3, prefetch=True),
               (8192, 28672): MatmulConfig(1, 256, 128, 64, 8, 3, prefetch=True),
               (28672, 8192): MatmulConfig(1, 256, 128, 8, 8, 3, prefetch=True)}


#: One way to compute a layer: ``(x, packed) -> x @ W^T`` (a tile of ours, another build, ...).
Call = Callable[[torch.Tensor, L.PackedWeights], torch.Tensor]


def tile_calls(configs: dict[str, MatmulConfig]) -> dict[str, Call]:
    """``awq_linear`` with each of ``configs``."""
    return {name: (lambda x, p, c=cfg: awq_linear(x, p, None, config=c)) for name, cfg in configs.items()}


def time_in_turn(k: int, n: int, calls: dict[str, Call], rounds: int, m: int = 1, layout: str = "gemv"
                 ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each call checked against float64 (relative error below 1e-3), then timed ``rounds``
    times, the calls in turn; returns the times (us per round) and the errors."""
    packs = [L.pack(*make_layer(k, n, GROUP, s), GROUP, layout)
             for s in range(copies_to_evict_l2(packed_bytes(k, n, GROUP)))]
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    ref = x.double() @ L.dequantize(packs[0], torch.float64).t()
    errors = {name: float((call(x, packs[0]).double() - ref).norm() / ref.norm()) for name, call in calls.items()}
    assert max(errors.values()) < 1e-3, (k, n, m, errors)
    t: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t[name].append(time_graph([lambda p=p, c=call: c(x, p) for p in packs]).median_us)
    return t, errors


def interleave_ab(shapes: list[tuple[int, int]], out: Path, rounds: int = 3) -> None:
    """Session 5's tuned M = 1 tile vs today's (``plan``), timed in turn ``rounds`` times each."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, n in shapes:
        _, tuned = plan(torch.device("cuda", torch.cuda.current_device()), "gemv", 1, n, k, GROUP, "auto",
                        DEFAULT_DISPATCH)
        configs = {"session5": SESSION5_M1[(k, n)], "tuned": tuned}
        t, _ = time_in_turn(k, n, tile_calls(configs), rounds)
        rows.append(dict(K=k, N=n, **{name: dict(config=str(configs[name]), us=t[name]) for name in configs}))
        print(f"{k}x{n}: " + "; ".join(f"{name} {configs[name]} " + "/".join(f"{us:.1f}" for us in t[name])
                                       for name in configs), flush=True)
    (out / "interleave-ab.json").write_text(json.dumps(rows, indent=1))


def adopt(shapes: list[tuple[int, int]], sweep_json: Path, out: Path, rounds: int = 3) -> None:
    """The GEMV layout's M = 1 entry of this GPU's shipped tuned table vs the best of a sweep
    (``tuned-gemv.json``), timed in turn; the faster (by median of ``rounds``) goes into the
    shipped table."""
    import statistics

    from awq_kernel_select.kernels import dispatch

    gpu = torch.cuda.get_device_name()
    table_path = next(p for p in dispatch.TUNED_DIR.glob("*.json") if json.loads(p.read_text()).get("gpu") == gpu)
    table = json.loads(table_path.read_text())
    swept = {(e["K"], e["N"]): MatmulConfig(**e["config"]) for e in json.loads(sweep_json.read_text())["entries"]
             if e["layout"] == "gemv" and e["M"] == 1}
    decisions = []
    for k, n in shapes:
        entry = next(e for e in table["entries"] if (e["layout"], e["K"], e["N"], e["M"]) == ("gemv", k, n, 1))
        configs = {"shipped": MatmulConfig(**entry["config"]), "swept": swept[(k, n)]}
        t, _ = time_in_turn(k, n, tile_calls(configs), rounds)
        median = {name: statistics.median(us) for name, us in t.items()}
        winner = min(median, key=lambda name: median[name])
        entry["config"], entry["us"] = dataclasses.asdict(configs[winner]), round(median[winner], 2)
        decisions.append(dict(K=k, N=n, winner=winner, **{name: dict(config=str(configs[name]), us=t[name])
                                                          for name in configs}))
        print(f"{k}x{n}: " + "; ".join(f"{name} {configs[name]} {median[name]:.1f}" for name in configs)
              + f" -> {winner}", flush=True)
    table_path.write_text(json.dumps(table, indent=1) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "adopt.json").write_text(json.dumps(decisions, indent=1))


STREAMS = [(4096, 1, 4), (4096, 1, 8), (4096, 4, 8), (8192, 2, 8), (16384, 1, 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/anatomy"))
    parser.add_argument("--ncu", action="store_true", help="launch each kernel once (run under ncu)")
    parser.add_argument("--ab", action="store_true",
                        help="the session-5 tuned M = 1 tiles vs the tuned ones (interleave_k), alternating")
    parser.add_argument("--adopt", type=Path, metavar="TUNED_JSON",
                        help="time each shape's M = 1 tile from this sweep output against the shipped one "
                             "(checked against float64 first) and write the faster into the shipped table")
    parser.add_argument("--read-tiles", action="store_true",
                        help="time only the read rung for several tile shapes (BK up to 512)")
    args = parser.parse_args()
    shapes = SHAPES_7B + SHAPES_70B
    if args.read_tiles:
        read_tiles(shapes, args.out)
        return
    if args.ab:
        interleave_ab(shapes, args.out)
        return
    if args.adopt:
        adopt(shapes, args.adopt, args.out)
        return
    if args.ncu:
        for k, n in [(4096, 4096), (8192, 28672)]:
            packed = L.pack(*make_layer(k, n, GROUP, 0), GROUP, "gemv")
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            _, cfg = plan(x.device, "gemv", 1, n, k, GROUP, "auto", DEFAULT_DISPATCH)
            for _ in range(2):
                awq_linear(x, packed, None)
                ladder(packed.qweight, n, k, cfg, True, False)
                stream(packed.qweight, 4096, 1, 8)
            gemm = L.pack(*make_layer(k, n, GROUP, 1), GROUP, "gemm")
            x16 = torch.randn(16, k, device="cuda", dtype=torch.float16)
            awq_linear(x16, gemm, None)  # the M = 16 tl.dot path, for comparison
            torch.cuda.synchronize()
            print(f"ncu: {k}x{n} {cfg}; then M = 16 GEMM layout {plan(x.device, 'gemm', 16, n, k, GROUP, 'auto', DEFAULT_DISPATCH)}",
                  flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    rows: list[dict[str, Any]] = []
    for k, n in shapes:
        layers = [make_layer(k, n, GROUP, s) for s in range(copies_to_evict_l2(packed_bytes(k, n, GROUP)))]
        packs = [L.pack(*layer, GROUP, "gemv") for layer in layers]
        fp16 = [peers.fp16_linear(*layer, GROUP) for layer in layers[: copies_to_evict_l2(k * n * 2)]]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        _, cfg = plan(x.device, "gemv", 1, n, k, GROUP, "auto", DEFAULT_DISPATCH)
        ref = x.double() @ L.dequantize(packs[0], torch.float64).t()
        err = float((awq_linear(x, packs[0], None).double() - ref).norm() / ref.norm())
        t: dict[str, float] = {}
        t["fp16"] = time_graph([lambda op=op: op(x) for op in fp16], reps=30).median_us
        t["empty"] = time_graph([lambda p=p: ladder(p.qweight, n, k, cfg, False, False) for p in packs]).median_us
        if cfg.interleave_k:
            session5_order = dataclasses.replace(cfg, interleave_k=False)
            t["read_n_first"] = time_graph([lambda p=p: ladder(p.qweight, n, k, session5_order, True, False)
                                            for p in packs]).median_us
        t["read"] = time_graph([lambda p=p: ladder(p.qweight, n, k, cfg, True, False) for p in packs]).median_us
        t["read+atomics"] = time_graph([lambda p=p: ladder(p.qweight, n, k, cfg, True, True)
                                        for p in packs]).median_us
        t["ours"] = time_graph([lambda p=p: awq_linear(x, p, None) for p in packs]).median_us
        best = None
        for block, iters, warps in STREAMS:
            us = time_graph([lambda p=p: stream(p.qweight, block, iters, warps) for p in packs]).median_us
            t[f"stream_{block}x{iters}_w{warps}"] = us
            best = us if best is None else min(best, us)
        t["stream"] = best
        floor = packed_bytes(k, n, GROUP) / bandwidth * 1e6
        qbytes = k * n // 2
        row = dict(K=k, N=n, config=str(cfg), err=err, floor_us=floor, qweight_bytes=qbytes, **t)
        rows.append(row)
        print(f"{k}x{n} {cfg}: " + ", ".join(f"{name} {us:.1f}" for name, us in t.items())
              + f" | floor {floor:.1f} us; read at {qbytes / t['read'] / 1e6:.2f} TB/s, stream at "
              f"{qbytes / best / 1e6:.2f} TB/s, ours {packed_bytes(k, n, GROUP) / t['ours'] / 1e6:.2f} TB/s, "
              f"err {err:.1e}", flush=True)
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                copy_bandwidth=bandwidth)
    (args.out / "m1-anatomy.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
