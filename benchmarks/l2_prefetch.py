"""Does asking L2 for the next layer's weights speed up a decode step? A/B on a 7B-shaped chain.

The M = 1 kernel streams each layer's weights at 32-61% of the copy bandwidth: between two
linears the memory system idles (the last programs and split-K tail, the next launch, the small
kernels of attention and norms). With ``prefetch_next`` each launch also issues one bulk L2
prefetch per program for the start of the next layer's weights (``matmul._prefetch_next_layer``),
so those idle microseconds fetch bytes the next layer would otherwise wait for.

The chain: 32 layers of the fused 7B shapes (q/k/v 4096x12288, o 4096x4096, gate/up 4096x22016,
down 11008x4096), each linear prefetching the next one (the last: the first layer's q/k/v), with
either nothing between the linears (``bare``) or stand-ins for what a compiled Llama runs there
(``model``: attention over a 256-position cache after q/k/v, residual add + RMSNorm after o and
down, SiLU x up after gate/up). Each variant is one CUDA graph of the whole chain, timed in turn
with the others (``--rounds``, median of ``--reps`` replays each); the outputs are checked
against the variant without prefetch and one layer against float64. Needs a CUDA GPU (sm90)::

    python benchmarks/l2_prefetch.py --out DIR        # ~2 min on an H100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import GROUP, make_layer, packed_bytes  # noqa: E402

from awq_kernel_select import layouts as L  # noqa: E402
from awq_kernel_select.bench.timing import copy_bandwidth  # noqa: E402
from awq_kernel_select.kernels import matmul  # noqa: E402
from awq_kernel_select.kernels.dispatch import DEFAULT_DISPATCH, plan  # noqa: E402

LAYER = [("qkv", 4096, 12288), ("o", 4096, 4096), ("gate_up", 4096, 22016), ("down", 11008, 4096)]  # (K, N)
MB = 2**20


def build_chain(layers: int) -> list[tuple[str, L.PackedWeights, matmul.MatmulConfig]]:
    device = torch.device("cuda", torch.cuda.current_device())
    chain = []
    for i in range(layers):
        for name, k, n in LAYER:
            _, cfg = plan(device, "gemv", 1, n, k, GROUP, "auto", DEFAULT_DISPATCH)
            chain.append((name, L.pack(*make_layer(k, n, GROUP, 100 * i + len(chain)), GROUP, "gemv"), cfg))
    return chain


def step(chain: list[tuple[str, L.PackedWeights, matmul.MatmulConfig]], x0: torch.Tensor, cache: torch.Tensor,
         nbytes: int, gaps: bool) -> Callable[[], torch.Tensor]:
    """One decode step through the chain; each linear prefetches ``nbytes`` of the next."""
    def linear(i: int, x: torch.Tensor) -> torch.Tensor:
        _, p, cfg = chain[i]
        nxt = (chain[(i + 1) % len(chain)][1].qweight, nbytes) if nbytes else None
        out, _ = matmul.awq_matmul_with_replay(x, p.qweight, p.qzeros, p.scales, None, True, p.in_features,
                                               p.out_features, GROUP, cfg, None, prefetch_next=nxt)
        return out

    def run() -> torch.Tensor:
        h = x0
        for i in range(0, len(chain), 4):
            y = linear(i, F.rms_norm(h, (4096,)) if gaps else h)  # q/k/v
            if gaps:  # attention of one query over the cache (k = v = cache: a stand-in)
                q = y[:, :4096].view(1, 32, 1, 128)
                y = F.scaled_dot_product_attention(q, cache, cache).reshape(1, 4096)
            else:
                y = y[:, :4096]
            y = linear(i + 1, y)  # o
            h = h + y if gaps else y
            y = linear(i + 2, F.rms_norm(h, (4096,)) if gaps else h)  # gate/up
            y = F.silu(y[:, :11008]) * y[:, 11008:] if gaps else y[:, :11008]
            y = linear(i + 3, y)  # down
            h = h + y if gaps else y
            h = h / h.norm() * 64.0  # keep the values bounded through 32 random layers
        return h

    return run


def capture(run: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    graph.replay()
    torch.cuda.synchronize()
    return graph, out


def time_replays(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--mb", type=float, nargs="+", default=[0, 2, 4, 8, 16, 32])
    parser.add_argument("--at", type=int, nargs="+", default=[1, 2], help="1: program start, 2: after the K loop")
    parser.add_argument("--gaps", nargs="+", default=["bare", "model"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/l2-prefetch"))
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        sys.exit("this benchmark needs an sm90+ CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    chain = build_chain(args.layers)
    weight_bytes = sum(packed_bytes(p.in_features, p.out_features, GROUP) for _, p, _ in chain)
    bandwidth = copy_bandwidth()
    floor_us = weight_bytes / bandwidth * 1e6
    x0 = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    cache = torch.randn(1, 32, 256, 128, device="cuda", dtype=torch.float16)
    # float64 check of one layer with the prefetch on
    _, p, cfg = chain[0]
    ref = x0.double() @ L.dequantize(p, torch.float64).t()
    out, _ = matmul.awq_matmul_with_replay(x0, p.qweight, p.qzeros, p.scales, None, True, 4096, p.out_features, GROUP,
                                           cfg, None, prefetch_next=(chain[1][1].qweight, 16 * MB))
    rel_err = float((out.double() - ref).norm() / ref.norm())
    assert rel_err < 1e-3, rel_err

    variants: dict[str, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    for gaps in args.gaps:
        for at in args.at:
            for mb in args.mb:
                if mb == 0 and at != args.at[0]:
                    continue
                name = f"{gaps}/off" if mb == 0 else f"{gaps}/at{at}/{mb:g}MB"
                matmul.PREFETCH_AT = at
                variants[name] = capture(step(chain, x0, cache, int(mb * MB), gaps == "model"))
    agreement = {name: float((out.double() - variants[f"{name.split('/')[0]}/off"][1].double()).norm()
                             / variants[f"{name.split('/')[0]}/off"][1].double().norm())
                 for name, (_, out) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (graph, _) in variants.items():
            times[name].append(time_replays(graph, args.reps))
    result = dict(gpu=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  torch=torch.__version__, layers=args.layers, weight_bytes=weight_bytes, copy_bandwidth=bandwidth,
                  floor_us=floor_us, rel_err_layer0=rel_err, rows=[])
    print(f"{result['gpu']}: {args.layers} layers, {weight_bytes / MB:.0f} MiB of weights, floor {floor_us:.0f} us "
          f"at {bandwidth / 1e12:.2f} TB/s; layer 0 with prefetch: relative error {rel_err:.1e}")
    for name, t in times.items():
        off = statistics.median(times[f"{name.split('/')[0]}/off"])
        row = dict(variant=name, us=t, median_us=statistics.median(t), vs_off=statistics.median(t) / off,
                   bandwidth_share=floor_us / statistics.median(t), out_vs_off=agreement[name])
        result["rows"].append(row)
        print(f"{name:22s} {row['median_us']:8.1f} us  ({'/'.join(f'{v:.0f}' for v in t)})  x{row['vs_off']:.3f} "
              f"of off  {100 * row['bandwidth_share']:.0f}% of bandwidth  out vs off {agreement[name]:.1e}", flush=True)
    (args.out / "l2-prefetch.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
