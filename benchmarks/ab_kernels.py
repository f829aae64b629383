"""This checkout's kernels against another commit's, alternating in one process on one GPU.

A kernel change is judged by the difference it makes, and two runs minutes apart on a shared
machine differ by more than many changes do. So both versions run here side by side: the other
commit's ``awq_kernel_select`` (a plain copy of the package, e.g. from ``git archive``) is
imported under another name, each layer is packed once per version, and the two are timed in
turn, ``--rounds`` times each, with the same inputs::

    git archive 94d073e awq_kernel_select | tar -x -C /tmp/base
    python -m benchmarks.ab_kernels --other /tmp/base --ms 1 2 --dtypes fp16 bf16 --out ab.json

Times are medians of CUDA-graph replays over enough weight copies that none is served from L2
(as ``benchmarks.kernels``); each version's output is checked against float64 first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.bench.timing import copies_to_evict_l2, time_graph
from awq_kernel_select.kernels import awq_linear
from benchmarks.kernels import DTYPES, GROUP, SHAPE_SETS, make_layer, packed_bytes, rel_err

Op = Callable[[torch.Tensor], torch.Tensor]


def import_other(root: Path, name: str = "aks_other") -> types.ModuleType:
    """The package under ``root/awq_kernel_select`` as ``name``, with its layouts, kernels and
    measured facts loaded but not its ``__init__`` (which would register the torch operators a
    second time)."""
    package = types.ModuleType(name)
    package.__path__ = [str(root / "awq_kernel_select")]
    sys.modules[name] = package
    importlib.import_module(f"{name}.measured")  # installs its tile tables as its dispatch's planner
    importlib.import_module(f"{name}.kernels.dispatch")
    importlib.import_module(f"{name}.layouts")
    return package


def builders(other: Any) -> dict[str, Callable[..., Op]]:
    """This checkout's ``awq_linear`` and ``other``'s (``import_other``), each on its own packing."""
    def builder(layouts: Any, linear: Callable[..., torch.Tensor]) -> Callable[..., Op]:
        def build(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> Op:
            packed = layouts.pack(q, z, s, GROUP, "gemv")
            return lambda x: linear(x, packed, None)
        return build

    return {"this": builder(L, awq_linear), "other": builder(other.layouts, other.kernels.dispatch.awq_linear)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="a directory holding the other awq_kernel_select")
    parser.add_argument("--ms", type=int, nargs="+", default=[1])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp16"])
    parser.add_argument("--shapes", default="all", choices=list(SHAPE_SETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    versions = builders(import_other(args.other))
    rows: list[dict[str, Any]] = []
    for k, n in SHAPE_SETS[args.shapes]:
        copies = copies_to_evict_l2(packed_bytes(k, n, GROUP))
        layers = [make_layer(k, n, GROUP, seed) for seed in range(copies)]
        ref_w = L.dequantize(L.pack(*layers[0], GROUP, "gemv"), torch.float64)
        ops = {name: [build(*layer) for layer in layers] for name, build in versions.items()}
        for dtype_name in args.dtypes:
            for m in args.ms:
                x = torch.randn(m, k, device="cuda", dtype=DTYPES[dtype_name])
                times: dict[str, list[float]] = {name: [] for name in ops}
                errors = {name: rel_err(op[0](x), x.double() @ ref_w.t()) for name, op in ops.items()}
                for _ in range(args.rounds):  # this, other, this, other, ...
                    for name, op_list in ops.items():
                        timing = time_graph([lambda op=op: op(x) for op in op_list], reps=args.reps)
                        times[name].append(timing.median_us)
                row = {"K": k, "N": n, "M": m, "dtype": dtype_name, "us": times, "rel_err": errors,
                       "ratio": statistics.median(times["other"]) / statistics.median(times["this"])}
                rows.append(row)
                print(f"{k}x{n} M={m} {dtype_name}: this {statistics.median(times['this']):.1f} us "
                      f"{[round(t, 1) for t in times['this']]}, other {statistics.median(times['other']):.1f} us "
                      f"{[round(t, 1) for t in times['other']]}, other/this {row['ratio']:.3f}, "
                      f"err this {errors['this']:.1e} other {errors['other']:.1e}", flush=True)
        del ops, layers
        torch.cuda.empty_cache()
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "other": str(args.other),
            "rounds": args.rounds, "reps": args.reps, "group_size": GROUP}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
