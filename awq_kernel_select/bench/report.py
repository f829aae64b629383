"""Benchmark output: a terminal table, JSON, a markdown summary and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from .run import BenchResult


def _ms(timing: object) -> str:
    median = getattr(timing, "median_us", None)
    if median is None:
        return "-"
    return f"{median / 1000:.2f} ({timing.p10_us / 1000:.2f}-{timing.p90_us / 1000:.2f})"  # type: ignore[attr-defined]


def table(result: BenchResult) -> str:
    unit = "ms, median (p10-p90)"
    lines = [
        f"{result.description} on {result.gpu['name'] if result.gpu else 'CPU'}",
        f"auto (select_kernel, interactive) = {result.auto_kernel}",
        "",
        f"| variant | TTFT, {unit} | decode eager, {unit} | decode CUDA graph, {unit} | "
        f"graph replays back to back, {unit} | generate, ms | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.single:
        peak = f"{r.peak_memory_bytes / 2**30:.1f}" if r.peak_memory_bytes else "-"
        gen = f"{r.generate_ms:.1f}" if r.generate_ms else "-"
        lines.append(f"| {r.variant} | {_ms(r.ttft)} | {_ms(r.decode_eager)} | {_ms(r.decode_graph)} | "
                     f"{_ms(r.decode_graph_back_to_back)} | {gen} | {peak} |")
    if result.floor_us:
        lines.append(f"| floor (bytes per step / {result.bandwidth_Bps / 1e12:.2f} TB/s) | - | - | "  # type: ignore[operator]
                     f"{result.floor_us / 1000:.2f} | {result.floor_us / 1000:.2f} | - | - |")
    if result.sweep:
        batches = sorted({b for d in result.sweep.values() for b in d})
        lines += ["", f"Decode step ({result.sweep_kind}), ms, by batch size:", "",
                  "| variant | " + " | ".join(str(b) for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for name, d in result.sweep.items():
            lines.append(f"| {name} | " + " | ".join(f"{d[b] / 1000:.2f}" if b in d else "-" for b in batches) + " |")
        lines.append("")
        lines.append(f"GEMM-layout overtakes GEMV-layout from batch {result.crossover}" if result.crossover
                     else "GEMM-layout never overtook GEMV-layout in this sweep" if result.on_gpu else
                     "(no crossover on the CPU path: both layouts run the same plain torch code)")
    if result.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in result.notes]
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, d in result.sweep.items():
        xs = sorted(d)
        ax.plot(xs, [d[b] / 1000 for b in xs], marker="o", label=name)
    if result.floor_us:
        ax.axhline(result.floor_us / 1000, color="gray", linestyle="--", label="bandwidth floor")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (tokens per decode step)")
    ax.set_ylabel(f"decode step, ms ({result.sweep_kind})")
    ax.set_title(f"{result.description}\n{result.gpu['name'] if result.gpu else 'CPU'}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_all(result: BenchResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "bench.json", out_dir / "bench.md"]
    written[0].write_text(json.dumps(result.to_dict(), indent=1, default=str))
    written[1].write_text(table(result) + "\n")
    if result.sweep and plot(result, out_dir / "bench.png"):
        written.append(out_dir / "bench.png")
    return written
