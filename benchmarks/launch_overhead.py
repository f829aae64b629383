"""CPU cost per call of one linear layer in eager mode: fp16 F.linear vs this library's paths.

    python benchmarks/launch_overhead.py          # on a GPU, seconds

A tiny layer (GPU time ~ a few us) is called N times back to back; time per call on the host
clock (synchronized at the end) is the launch cost that eager decode pays per layer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awq_kernel_select import layouts as L  # noqa: E402
from awq_kernel_select.kernels import launch  # noqa: E402
from awq_kernel_select.modules import AKSLinearGEMM, AKSLinearGEMV  # noqa: E402


def per_call_us(fn, n: int = 3000) -> float:  # type: ignore[no-untyped-def]
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    k = n = 512
    w = torch.randn(n, k, device="cuda") * 0.02
    q, z, s = L.quantize_rtn(w, 128)
    x = torch.randn(1, 1, k, device="cuda", dtype=torch.float16)
    w16 = L.dequantize(L.pack(q, z, s, 128, "gemm"), torch.float16)
    per_call_us(lambda: torch.nn.functional.linear(x, w16), n=20000)  # clocks up
    results = {"fp16 F.linear": per_call_us(lambda: torch.nn.functional.linear(x, w16))}
    for cls in (AKSLinearGEMV, AKSLinearGEMM):
        for fast in (True, False):
            launch.FAST_LAUNCH = fast
            mod = cls.from_packed(L.pack(q, z, s, 128, cls.layout))
            results[f"{cls.__name__} fast_launch={fast}"] = per_call_us(lambda: mod(x))
    results["fp16 F.linear (again)"] = per_call_us(lambda: torch.nn.functional.linear(x, w16))
    launch.FAST_LAUNCH = True
    from triton import knobs

    print("launch hooks:", knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook,
          "| cached launchers:", len(launch._LAUNCHERS), "| direct launches off because:", launch._disabled_because)
    for name, v in results.items():
        print(f"{name:40s} {v:7.1f} us/call")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
