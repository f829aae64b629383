"""What ``load_quantized(verify=True)`` costs on a checkpoint with Llama-2-7B layer shapes.

Writes an fp16 model with the 7B shapes (random weights, ``--layers`` decoder layers) and its
round-to-nearest 4-bit checkpoints in both layouts, then loads each with ``verify`` off and on,
plain and fused. The check runs each *distinct* layer once, so its cost does not grow with the
number of layers; the first verified load includes compiling the kernels for the checked shapes
(a cost the first forward would pay anyway), the second is the steady cost::

    python -m benchmarks.verify_cost --layers 4 --out DIR     # ~1 min on an H100
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from awq_kernel_select.bench.model import LLAMA2_7B, TINY, embedded_tokenizer, random_llama
from awq_kernel_select.load import load_quantized
from awq_kernel_select.quantize import quantize
from awq_kernel_select.verify import verify_layers


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_load(path: Path, device: str, **kwargs: Any) -> tuple[float, Any]:
    sync()
    start = time.perf_counter()
    wrapper = load_quantized(path, device=device, **kwargs)
    sync()
    return time.perf_counter() - start, wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: checks that the tool runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    src = args.out / "fp16"
    device = "cpu" if args.tiny else "cuda"
    random_llama(TINY if args.tiny else LLAMA2_7B, args.layers, torch.device(device)).cpu().save_pretrained(src)
    embedded_tokenizer().save_pretrained(src)
    rows = []
    for layout in ("gemm", "gemv"):
        ckpt = args.out / f"rtn-{layout}"
        quantize(str(src), ckpt, method="rtn", version=layout, overwrite=True)
        for fuse in (False, True):
            plain, _ = timed_load(ckpt, device, fuse_layers=fuse)
            cold, wrapper = timed_load(ckpt, device, fuse_layers=fuse, verify=True)
            warm, wrapper = timed_load(ckpt, device, fuse_layers=fuse, verify=True)
            sync()
            start = time.perf_counter()
            checks = verify_layers(wrapper.model)
            sync()
            alone = time.perf_counter() - start
            worst = max(c.rel_error for c in checks)
            rows.append({"layout": layout, "fused": fuse, "load_s": plain, "verified_load_first_s": cold,
                         "verified_load_s": warm, "verify_alone_s": alone, "checks": len(checks),
                         "worst_rel_error": worst, "kernels": sorted({c.kernel for c in checks})})
            del wrapper
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"gpu": gpu, "layers": args.layers, "shape": "tiny" if args.tiny else "Llama-2-7B", "rows": rows}
    (args.out / "verify-cost.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{gpu}, {args.layers} layers with {result['shape']} shapes")
    print("| layout | fused | load s | verified load s (first) | verified load s | verify alone s | checks | worst rel. err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['fused']} | {r['load_s']:.2f} | {r['verified_load_first_s']:.2f} | "
              f"{r['verified_load_s']:.2f} | {r['verify_alone_s']:.3f} | {r['checks']} | {r['worst_rel_error']:.1e} |")


if __name__ == "__main__":
    main()
