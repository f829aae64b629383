"""One decode step's attention on each SDPA backend: the 7B shapes, one query, a static KV cache.

The embedded benchmark model is transformers' Llama with ``attn_implementation="sdpa"`` and a
static cache, so each layer calls ``scaled_dot_product_attention`` with one query, the cache's
``prompt_len + 16`` keys and a mask (which rules out the flash backend). This times the
backends that take the call, 32 layers' worth of calls captured in one CUDA graph, median of
replays, each checked against the math backend in float64::

    python -m benchmarks.sdpa_decode --out DIR     # ~20 s on an H100

It times this library's split-KV decode kernel too (``kernels/attention.py``, ``aks``: its
default config) and, with ``--aks-sweep``, its configs (keys per loop step, programs in all,
warps), timed the same way::

    python -m benchmarks.sdpa_decode --aks-sweep --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

import itertools
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


from awq_kernel_select.kernels.attention import DEFAULT_CONFIG, DecodeAttentionConfig, decode_attention

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--kv-lens", type=int, nargs="+", default=[144, 528, 2064])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--aks-sweep", action="store_true", help="also time the decode kernel's configs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sdpa-decode"))
    args = parser.parse_args()
    dev = torch.device("cuda")
    rows = []
    for kv in args.kv_lens:
        q = torch.randn(1, args.heads, 1, args.head_dim, device=dev, dtype=torch.float16)
        ks = [torch.randn(1, args.heads, kv, args.head_dim, device=dev, dtype=torch.float16)
              for _ in range(args.layers)]
        vs = [torch.randn_like(k) for k in ks]
        mask = torch.zeros(1, 1, 1, kv, device=dev, dtype=torch.float16)
        mask[..., kv - 15:] = float("-inf")  # the cache's unfilled slots, as transformers masks them
        ref = F.scaled_dot_product_attention(q.double(), ks[0].double(), vs[0].double(), attn_mask=mask.double())
        row: dict[str, object] = {"kv_len": kv}
        calls: dict[str, tuple[Callable[[Any, Any], Any], Any]] = {
            name: ((lambda k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), sdpa_kernel([backend]))
            for name, backend in BACKENDS.items()}
        configs = {"aks": DEFAULT_CONFIG}
        if args.aks_sweep:
            configs.update({f"aks n{bn} p{p} w{w}": DecodeAttentionConfig(bn, p, w)
                            for bn, p, w in itertools.product((16, 32, 64), (132, 264, 528), (2, 4))})
        for name, cfg in configs.items():
            calls[name] = ((lambda k, v, cfg=cfg: decode_attention(q, k, v, mask, config=cfg)), contextlib.nullcontext())
        for name, (call, context) in calls.items():
            try:
                with context:
                    out = call(ks[0], vs[0])
                    if name.startswith("aks"):
                        out = out.transpose(1, 2)
                    err = float((out.double() - ref).norm() / ref.norm())
                    graph = torch.cuda.CUDAGraph()
                    torch.cuda.synchronize()
                    with torch.cuda.graph(graph):
                        for k, v in zip(ks, vs):
                            call(k, v)
            except RuntimeError as exc:
                row[name] = {"error": str(exc).splitlines()[0][:200]}
                continue
            for _ in range(5):
                graph.replay()
            times = []
            for _ in range(args.replays):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1000 / args.layers)
            row[name] = {"us_per_call": statistics.median(times), "rel_err": err}
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    (args.out / "sdpa-decode.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
