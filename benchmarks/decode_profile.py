"""Where one decode step's time goes: the kernels of a compiled CUDA-graph step, and the host in eager mode.

For the embedded 7B-shaped model (``awq-kernel-select bench``'s), fp16 and the fused GEMV-layout
4-bit model (``fuse_projections``):

* **compiled + CUDA graph**: ``torch.compile`` (inductor, fullgraph, static KV cache), the step
  captured in a CUDA graph and replayed under ``torch.profiler``; every kernel of a replay is
  put in a group (our linears by grid shape, cuBLAS, attention, inductor's fused kernels, ...)
  and the time between kernels is reported as gaps.
* **eager**: the uncompiled decode step (what ``generate`` runs), the two models timed in turn
  (``--rounds`` x ``--steps``, host clock around synchronised steps), and the host time of one
  step split by torch operator (``torch.profiler`` CPU self time).

Needs a CUDA GPU::

    python -m benchmarks.decode_profile --out DIR        # ~3 min on an H100 (two compilations)
"""

from __future__ import annotations

import argparse
import collections
import copy
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch



from awq_kernel_select.bench.latency import eager_decode_step, prefilled_static_cache, random_prompt, repeatable_step
from awq_kernel_select.bench.model import embedded_models, packed_bytes_per_token
from awq_kernel_select.bench.timing import capture_graph, copy_bandwidth
from awq_kernel_select.fuse import fuse_projections
from awq_kernel_select.modules import set_layout

GROUPS = [("ours", ("awq_",)), ("cublas", ("gemm", "gemv", "nvjet", "cutlass", "sm90_", "cublas")),
          ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")), ("inductor", ("triton_",))]


def group_of(name: str) -> str:
    low = name.lower()
    return next((g for g, keys in GROUPS if any(k in low for k in keys)), "other")


def graph_kernels(step: Callable[[], Any], replays: int) -> list[list[dict[str, Any]]]:
    """The kernels of each of ``replays`` CUDA-graph replays of ``step``: name, grid, start, duration (us)."""
    graph, _ = capture_graph([step])
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
            torch.cuda.synchronize()
            time.sleep(0.002)  # a clear break between replays
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    runs: list[list[dict[str, Any]]] = [[]]
    for e in kernels:
        item = dict(name=e["name"], grid=e.get("args", {}).get("grid"), start=float(e["ts"]), us=float(e["dur"]))
        if runs[-1] and item["start"] - (runs[-1][-1]["start"] + runs[-1][-1]["us"]) > 1000:  # the sleep
            runs.append([])
        runs[-1].append(item)
    return runs


def one_layer(run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kernels of one decoder layer in launch order (from the 3rd to the 4th launch of our
    most frequent grid), with the gap before each."""
    ours = [i for i, k in enumerate(run) if group_of(k["name"]) == "ours"]
    if len(ours) < 16:
        return []
    first = collections.Counter(str(run[i]["grid"]) for i in ours).most_common(1)[0][0]
    starts = [i for i in ours if str(run[i]["grid"]) == first]
    out = []
    for i in range(starts[2], starts[3]):
        k, prev = run[i], run[i - 1]
        out.append(dict(name=k["name"][:70], grid=k["grid"], us=k["us"], gap_us=k["start"] - prev["start"] - prev["us"]))
    return out


def summarize(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per replay: its span, the kernels' sum, gaps; per group (ours split by grid) the time and count."""
    spans, busy = [], []
    groups: dict[str, list[float]] = collections.defaultdict(list)
    counts: dict[str, int] = {}
    for run in runs:
        spans.append(run[-1]["start"] + run[-1]["us"] - run[0]["start"])
        busy.append(sum(k["us"] for k in run))
        per: dict[str, float] = collections.defaultdict(float)
        count: dict[str, int] = collections.defaultdict(int)
        for k in run:
            g = group_of(k["name"])
            key = f"ours grid {k['grid']}" if g == "ours" else f"{g}: {k['name'][:60]}"
            per[key] += k["us"]
            count[key] += 1
        for key, us in per.items():
            groups[key].append(us)
        counts = dict(count)
    span, kernels = statistics.median(spans), statistics.median(busy)
    table = sorted(((key, statistics.median(v), counts.get(key, 0)) for key, v in groups.items()), key=lambda r: -r[1])
    return dict(span_us=span, kernels_us=kernels, gaps_us=span - kernels, kernel_count=len(runs[0]),
                groups=[dict(key=k, us=us, count=c) for k, us, c in table], one_layer=one_layer(runs[len(runs) // 2]))


@torch.no_grad()
def compiled_step(model: Any, prompt: torch.Tensor) -> Callable[[], Any]:
    static, position = prefilled_static_cache(model, prompt)
    torch._dynamo.reset()
    compiled: Any = torch.compile(model.forward, fullgraph=True, dynamic=False)
    step_input = prompt[:, -1:]
    return repeatable_step(compiled, static, step_input, position)


@torch.no_grad()
def eager_steps(models: dict[str, Any], prompt: torch.Tensor, rounds: int, steps: int) -> dict[str, Any]:
    """Eager decode steps (DynamicCache, as ``generate``), the models in turn; and one step's host profile."""
    calls = {name: eager_decode_step(model, batch=prompt.shape[0], prompt_len=prompt.shape[1])
             for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, step in calls.items():
            for _ in range(2):
                step()
            torch.cuda.synchronize()
            for _ in range(steps):
                started = time.perf_counter()
                step()
                torch.cuda.synchronize()
                times[name].append((time.perf_counter() - started) * 1e6)
    host, python = {}, {}
    for name, step in calls.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
            torch.cuda.synchronize()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
        host[name] = [dict(op=e.key, self_us=e.self_cpu_time_total, calls=e.count) for e in rows]
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [step() for _ in range(5)])
        stats = pstats.Stats(profiler)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]  # type: ignore[attr-defined]
        python[name] = [dict(function=f"{Path(f).name}:{line} {fn}", calls=v[1], self_us_per_step=v[2] * 1e6 / 5,
                             cumulative_us_per_step=v[3] * 1e6 / 5) for (f, line, fn), v in top]
    return dict(step_us={name: dict(median=statistics.median(v), p10=sorted(v)[len(v) // 10],
                                    p90=sorted(v)[len(v) * 9 // 10], samples=len(v)) for name, v in times.items()},
                host_profile=host, python_profile=python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--replays", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10, help="eager rounds (0: no eager part)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--unfused", action="store_true", help="also the unfused GEMV-layout model (eager only)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/decode-profile"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    built = embedded_models(args.layers, device)
    fused = set_layout(copy.deepcopy(built.quantized), "gemv")
    fuse_projections(fused)
    models = {"fp16": built.fp16, "aks_gemv_fused": fused}
    if args.unfused:
        models["aks_gemv"] = set_layout(copy.deepcopy(built.quantized), "gemv")
    del built
    prompt = random_prompt(fused, 1, 128, device)
    bandwidth = copy_bandwidth()
    result: dict[str, Any] = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), layers=args.layers,
                                  floor_us=packed_bytes_per_token(fused) / bandwidth * 1e6, copy_bandwidth=bandwidth)
    print(f"{result['gpu']}: floor {result['floor_us']:.0f} us at {bandwidth / 1e12:.2f} TB/s", flush=True)
    result["eager"] = eager_steps(models, prompt, args.rounds, args.steps) if args.rounds else dict(
        step_us={}, host_profile={}, python_profile={})
    for name, t in result["eager"]["step_us"].items():
        print(f"eager {name}: {t['median'] / 1000:.2f} ms (p10 {t['p10'] / 1000:.2f}, p90 {t['p90'] / 1000:.2f})")
    for name, rows in result["eager"]["host_profile"].items():
        print(f"host, one eager step of {name} (self CPU us, calls):")
        for r in rows[:10]:
            print(f"  {r['op'][:50]:50s} {r['self_us']:8.0f} {r['calls']:5d}")
    for name, rows in result["eager"]["python_profile"].items():
        print(f"python (cProfile), one eager step of {name} (self us, cumulative us, calls):")
        for r in rows[:14]:
            print(f"  {r['function'][:60]:60s} {r['self_us_per_step']:8.0f} {r['cumulative_us_per_step']:8.0f} "
                  f"{r['calls'] // 5:5d}")
    if not args.no_compile:
        result["compiled_graph"] = {}
        for name, model in [(n, m) for n, m in models.items() if n != "aks_gemv"]:
            s = summarize(graph_kernels(compiled_step(model, prompt), args.replays))
            result["compiled_graph"][name] = s
            print(f"compiled + graph {name}: span {s['span_us']:.0f} us, kernels {s['kernels_us']:.0f} us "
                  f"({s['kernel_count']} kernels), gaps {s['gaps_us']:.0f} us", flush=True)
            for g in s["groups"][:14]:
                print(f"  {g['key'][:70]:70s} {g['us']:8.1f} us {g['count']:4d}x")
            for k in s["one_layer"]:
                print(f"  one layer: {k['name'][:60]:60s} {str(k['grid']):14s} {k['us']:6.1f} us (gap {k['gap_us']:4.1f})")
            (args.out / "decode-profile.json").write_text(json.dumps(result, indent=1))
    (args.out / "decode-profile.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
