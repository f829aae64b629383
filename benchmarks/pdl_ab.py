"""Programmatic dependent launch on and off, per path, M = 1, 2 and 16 (GPU, sm90+).

Each path's tuned tile is timed as back-to-back calls over rotated weight copies in a CUDA
graph, with PDL off and on (and at M = 1, where the GEMV layout's tile does not prefetch, with
prefetch forced on: only then are the first weights read before the wait). Each variant's output
is first checked against float64 inside a captured graph (PDL edges included)::

    python benchmarks/pdl_ab.py --out /tmp/pdl      # ~2 min on an H100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peers  # noqa: E402
from kernels import GROUP, SHAPES_7B, SHAPES_70B, make_layer, packed_bytes  # noqa: E402

from awq_kernel_select import layouts as L  # noqa: E402
from awq_kernel_select.bench.timing import copies_to_evict_l2, copy_bandwidth, time_graph  # noqa: E402
from awq_kernel_select.kernels import awq_linear, matmul  # noqa: E402
from awq_kernel_select.kernels.dispatch import DEFAULT_DISPATCH, plan  # noqa: E402
from awq_kernel_select.kernels.matmul import MatmulConfig  # noqa: E402


def error_in_graph(x: torch.Tensor, packs: list[L.PackedWeights], config: MatmulConfig, ref: torch.Tensor) -> float:
    for p in packs:  # compile and allocate outside the capture
        awq_linear(x, p, None, config=config)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [awq_linear(x, p, None, config=config) for p in packs]
    graph.replay()
    torch.cuda.synchronize()
    return float((outs[0].double() - ref).norm() / ref.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pdl"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bandwidth = copy_bandwidth()
    rows: list[dict[str, Any]] = []
    for k, n in SHAPES_7B + SHAPES_70B:
        layers = [make_layer(k, n, GROUP, s) for s in range(copies_to_evict_l2(packed_bytes(k, n, GROUP)))]
        ref_w = L.dequantize(L.pack(*layers[0], GROUP, "gemm"), torch.float64)
        fp16 = [peers.fp16_linear(*layer, GROUP) for layer in layers[: copies_to_evict_l2(k * n * 2)]]
        floor = packed_bytes(k, n, GROUP) / bandwidth * 1e6
        for m in (1, 2, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x.double() @ ref_w.t()
            t16 = time_graph([lambda op=op: op(x) for op in fp16], reps=30).median_us
            line = [f"{k}x{n} M={m}: fp16 {t16:.1f}"]
            for layout in ("gemv", "gemm"):
                packs = [L.pack(*layer, GROUP, layout) for layer in layers]
                _, tuned = plan(x.device, layout, m, n, k, GROUP, "auto", DEFAULT_DISPATCH)
                variants = {"off": (False, tuned), "pdl": (True, tuned)}
                if m == 1 and layout == "gemv" and not tuned.prefetch:
                    variants["pdl+pf"] = (True, dataclasses.replace(tuned, prefetch=True))
                for name, (pdl, config) in variants.items():
                    matmul.USE_PDL = pdl
                    try:
                        err = error_in_graph(x, packs[:3], config, ref)
                        us = time_graph([lambda p=p: awq_linear(x, p, None, config=config) for p in packs],
                                        reps=30).median_us
                    finally:
                        matmul.USE_PDL = False
                    line.append(f"{layout}/{name} {us:.1f} ({t16 / us:.2f}x, err {err:.1e})")
                    rows.append(dict(K=k, N=n, M=m, layout=layout, variant=name, us=us, fp16_us=t16,
                                     floor_us=floor, err=err, config=str(config)))
            print(" | ".join(line) + f" | floor {floor:.1f}", flush=True)
    (args.out / "pdl.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
