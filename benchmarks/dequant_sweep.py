"""Large-M path: dequantize + cuBLAS, whole layer vs column chunks kept in L2, and tile sizes.

    python -m benchmarks.dequant_sweep --out DIR      # on a GPU, ~2 minutes

Same method as ``kernels.py`` (CUDA-graph replays over weight copies that do not fit in L2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import torch


from benchmarks.kernels import GROUP, SHAPES_7B, SHAPES_70B, make_layer, packed_bytes

from awq_kernel_select import layouts as L
from awq_kernel_select.bench.timing import copies_to_evict_l2, time_graph
from awq_kernel_select.kernels import dequant, dispatch

MB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ms", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--chunks-mb", type=int, nargs="+", default=[0, 8, 16, 32])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    tiles = [(64, 64, 4), (32, 128, 4), (64, 128, 4), (128, 128, 8)]
    for k, n in SHAPES_7B + SHAPES_70B:
        copies = copies_to_evict_l2(packed_bytes(k, n, GROUP))
        layers = [make_layer(k, n, GROUP, seed) for seed in range(copies)]
        ref = L.dequantize(L.pack(*layers[0], GROUP, "gemm"), torch.float16)
        fp16 = [ref.clone() for _ in range(copies_to_evict_l2(k * n * 2))]
        for layout in ("gemm", "gemv"):
            packed = [L.pack(*layer, GROUP, layout) for layer in layers]
            for m in args.ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                row = {"K": k, "N": n, "M": m, "layout": layout}
                row["fp16"] = time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in fp16], reps=10).median_us
                for chunk in args.chunks_mb:
                    pol = dispatch.DispatchPolicy(dequant_chunk_bytes=chunk * MB)
                    out = dispatch.awq_linear(x, packed[0], path="dequant", plan=dispatch.default_plan(x.device).with_policy(pol))
                    err = float((out.double() - x.double() @ ref.double().t()).norm() / (x.double() @ ref.double().t()).norm())
                    assert err < 1e-3, (k, n, m, chunk, err)
                    row[f"chunk{chunk}MB"] = time_graph(
                        [lambda p=p: dispatch.awq_linear(x, p, path="dequant", plan=dispatch.default_plan(x.device).with_policy(pol)) for p in packed], reps=10).median_us
                pol = dispatch.DispatchPolicy(dequant_chunk_bytes=16 * MB)
                for bk, bn, warps in tiles:
                    real = dequant.dequantize_triton

                    def tiled(*a, _r=real, _bk=bk, _bn=bn, _w=warps, **kw):  # type: ignore[no-untyped-def]
                        return _r(*a, **kw, block_k=_bk, block_n=_bn, num_warps=_w)

                    with mock.patch.object(dispatch, "dequantize_triton", tiled):
                        row[f"tile{bk}x{bn}w{warps}"] = time_graph(
                            [lambda p=p: dispatch.awq_linear(x, p, path="dequant", plan=dispatch.default_plan(x.device).with_policy(pol)) for p in packed], reps=10).median_us
                best = min((v, key) for key, v in row.items() if key.startswith(("chunk", "tile")))
                row["best"] = best[1]
                row["ratio"] = row["fp16"] / best[0]
                rows.append(row)
                print(json.dumps({key: (round(v, 1) if isinstance(v, float) else v) for key, v in row.items()}), flush=True)
        (args.out / "dequant-sweep.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
