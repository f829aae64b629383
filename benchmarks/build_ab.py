"""Two builds of the kernels, the same tiles, timed in turn: this checkout's ``matmul.py`` and
another version of that file (``--variant``), for the tuned tile of every shape at each M.

Triton compiles from source, so a change that leaves a kernel's registers and instruction
counts alone can still move its time (instruction order, where a value is computed). This is
how such a change is checked before it ships::

    git show 6d9bbbf:awq_kernel_select/kernels/matmul.py > /tmp/matmul_6d9bbbf.py
    python benchmarks/build_ab.py --variant /tmp/matmul_6d9bbbf.py --out DIR

Same method as ``kernels.py``: CUDA-graph replays, weights rotated out of L2, median per round;
each tile is checked against a float64 reference first. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import GROUP, SHAPES_7B, SHAPES_70B  # noqa: E402
from m1_anatomy import time_in_turn  # noqa: E402

from awq_kernel_select import layouts as L  # noqa: E402
from awq_kernel_select.kernels import matmul  # noqa: E402
from awq_kernel_select.kernels.dispatch import DEFAULT_DISPATCH, plan  # noqa: E402


def load_variant(path: Path) -> ModuleType:
    """``path`` imported as a sibling of ``matmul`` (its relative imports resolve the same)."""
    spec = importlib.util.spec_from_file_location("awq_kernel_select.kernels._variant", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", type=Path, required=True, help="another version of kernels/matmul.py")
    parser.add_argument("--layout", default="gemv", choices=["gemv", "gemm"])
    parser.add_argument("--ms", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/build-ab"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    builds = {"this": matmul, "variant": load_variant(args.variant)}
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"gpu": torch.cuda.get_device_name(), "variant": str(args.variant), "layout": args.layout,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    gemv = args.layout == "gemv"
    for m in args.ms:
        for k, n in SHAPES_7B + SHAPES_70B:
            _, cfg = plan(torch.device("cuda", torch.cuda.current_device()), args.layout, m, n, k, GROUP, "auto",
                          DEFAULT_DISPATCH)

            def call(build: ModuleType, x: torch.Tensor, p: L.PackedWeights) -> torch.Tensor:
                out, _ = build.awq_matmul_with_replay(x, p.qweight, p.qzeros, p.scales, None, gemv, k, n, GROUP,
                                                      build.MatmulConfig(**vars(cfg)), None)
                return out

            us, errors = time_in_turn(k, n, {name: functools.partial(call, b) for name, b in builds.items()},
                                      args.rounds, m, args.layout)
            result["rows"].append(dict(K=k, N=n, M=m, config=str(cfg), us=us, rel_err=errors))
            print(f"M={m} {k}x{n} {cfg}: " + "; ".join(f"{name} {statistics.median(v):.1f} us"
                                                        for name, v in us.items()), flush=True)
            (args.out / "build-ab.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
