"""M = 1, GEMV layout: the tuned split-K tile vs narrow tiles that run long stretches of K.

A tile of 16-128 rows x 512-1024 K with 1-4 splits needs few or no atomics (the split-K tail:
partial sums, ticket, the last program's read-back), at the price of fewer programs. Each
candidate's output is checked against float64 before it is timed (GPU)::

    python benchmarks/m1_long_k_tiles.py --out /tmp/m1     # ~2 min on an H100
"""

from __future__ import annotations

import argparse
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
from awq_kernel_select.bench.timing import copies_to_evict_l2, time_graph  # noqa: E402
from awq_kernel_select.kernels import awq_linear  # noqa: E402
from awq_kernel_select.kernels.dispatch import DEFAULT_DISPATCH, plan  # noqa: E402
from awq_kernel_select.kernels.matmul import MatmulConfig  # noqa: E402

CANDIDATES = [MatmulConfig(1, bn, bk, split, warps, 3, prefetch=prefetch)
              for bn, bk, warps in ((16, 1024, 4), (32, 512, 4), (32, 1024, 4), (32, 1024, 8), (64, 512, 4),
                                    (64, 512, 8), (64, 1024, 8), (128, 512, 8))
              for split in (1, 2, 4) for prefetch in (False, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/m1"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for k, n in SHAPES_7B + SHAPES_70B:
        layers = [make_layer(k, n, GROUP, s) for s in range(copies_to_evict_l2(packed_bytes(k, n, GROUP)))]
        packs = [L.pack(*layer, GROUP, "gemv") for layer in layers]
        fp16 = [peers.fp16_linear(*layer, GROUP) for layer in layers[: copies_to_evict_l2(k * n * 2)]]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ref = x.double() @ L.dequantize(packs[0], torch.float64).t()
        t16 = time_graph([lambda op=op: op(x) for op in fp16], reps=30).median_us
        _, tuned = plan(x.device, "gemv", 1, n, k, GROUP, "auto", DEFAULT_DISPATCH)
        results = []
        for config in [tuned] + [c for c in CANDIDATES if c.split_k <= -(-k // c.block_k)]:
            out = awq_linear(x, packs[0], None, config=config)
            err = float((out.double() - ref).norm() / ref.norm())
            us = time_graph([lambda p=p: awq_linear(x, p, None, config=config) for p in packs], reps=30).median_us
            results.append((us, str(config), err))
            rows.append(dict(K=k, N=n, config=str(config), us=us, fp16_us=t16, err=err, tuned=config is tuned))
        results.sort()
        tuned_us = next(us for us, name, _ in results if name == str(tuned))
        print(f"{k}x{n}: fp16 {t16:.1f} | tuned {tuned} {tuned_us:.1f} ({t16 / tuned_us:.2f}x) | fastest: "
              + "; ".join(f"{c} {us:.1f} ({t16 / us:.2f}x, err {e:.0e})" for us, c, e in results[:4]), flush=True)
    (args.out / "m1.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
