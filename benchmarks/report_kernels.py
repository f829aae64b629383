"""Turn ``kernels.json`` (from ``benchmarks/kernels.py``) into a markdown table and a plot."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

SHOWN = ["ours_gemv_layout", "ours_gemv_layout_pdl", "ours_gemv_layout:wgmma", "ours_gemm_layout", "tinygemm", "gemlite",
         "autoawq"]


def _shown(result: dict[str, Any]) -> list[str]:
    """The contenders of ``SHOWN`` that this result measured."""
    present = {row["contender"] for row in result["rows"]}
    return [c for c in SHOWN if c in present]


def _index(result: dict[str, Any]) -> dict[tuple[int, int, int], dict[str, float]]:
    table: dict[tuple[int, int, int], dict[str, float]] = defaultdict(dict)
    for row in result["rows"]:
        if "median_us" in row:
            table[(row["K"], row["N"], row["M"])][row["contender"]] = row["median_us"]
            table[(row["K"], row["N"], row["M"])]["floor"] = row["floor_us"]
    return table


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    table = _index(result)
    shown = _shown(result)
    dense = meta.get("dtype", "fp16")  # the dense baseline's dtype, the activations' dtype
    lines = [
        f"GPU: **{meta['gpu']}** (compute capability {meta['capability'][0]}.{meta['capability'][1]}), "
        f"torch {meta['torch']} (CUDA {meta['cuda']}), triton {meta.get('triton', '?')}, "
        f"AutoAWQ path on this stack: `{meta['autoawq_path']}`; {meta['date']}; group size {meta['group_size']}; "
        f"activations {dense}.",
        f"Device-to-device copy bandwidth: {result['bandwidth_Bps'] / 1e12:.2f} TB/s (read + write)."
        + (f" Tiles: {meta['tile_table']}." if "tile_table" in meta else ""),
        "",
        f"Speed-up over {dense} `F.linear` ({dense} time / contender time; higher is better). "
        f"`floor` is {dense} time / (packed bytes / copy bandwidth). `BW%` is our best layout's share "
        "of that bandwidth (without PDL). `auto/best` is our auto dispatch (GEMM layout) over the best of its "
        "forced paths. `_pdl`: launched with programmatic dependent launch (`AWQ_KERNEL_SELECT_PDL=1`).",
        "",
        f"| K x N | M | {dense} us | " + " | ".join(shown) + " | floor | BW% | auto/best |",
        "|---|---|---|" + "---|" * len(shown) + "---|---|---|",
    ]
    for (k, n, m), times in sorted(table.items()):
        fp16 = times.get("fp16")
        if fp16 is None:
            continue
        cells = [f"{fp16 / times[c]:.2f}x" if c in times else "-" for c in shown]
        floor = times.get("floor")
        ours_best = min((times[c] for c in ("ours_gemv_layout", "ours_gemm_layout") if c in times), default=None)
        bw = f"{100 * floor / ours_best:.0f}%" if floor and ours_best and m <= 16 else "-"
        forced = [times[f"ours_gemm_layout:{p}"] for p in ("gemv", "gemm", "dequant") if f"ours_gemm_layout:{p}" in times]
        auto = times.get("ours_gemm_layout")
        ratio = f"{auto / min(forced):.2f}" if auto and forced else "-"
        tail = f" | {fp16 / floor:.2f}x | {bw} | {ratio} |" if floor else " | - | - | - |"
        lines.append(f"| {k} x {n} | {m} | {fp16:.1f} | " + " | ".join(cells) + tail)
    lines += ["", "Relative error vs a float64 reference (||out - ref|| / ||ref||), M = 1 and 16:", "",
              "| K x N | M | contender | rel. error |", "|---|---|---|---|"]
    for e in result["errors"]:
        lines.append(f"| {e['K']} x {e['N']} | {e['M']} | {e['contender']} | {e['rel_err']:.2e} |")
    unavailable = sorted({(r["contender"], r["unavailable"]) for r in result["rows"] if "unavailable" in r})
    failed = [r for r in result["rows"] if "error" in r]
    if unavailable or failed:
        lines += ["", "Not measured:"]
        lines += [f"- {c}: {why}" for c, why in unavailable]
        lines += [f"- {r['contender']} at {r['K']}x{r['N']}, M={r['M']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _index(result)
    shapes = sorted({(k, n) for k, n, _ in table})
    fig, axes = plt.subplots(2, (len(shapes) + 1) // 2, figsize=(5 * ((len(shapes) + 1) // 2), 8), squeeze=False)
    for ax, (k, n) in zip(axes.flat, shapes):
        ms = sorted(m for kk, nn, m in table if (kk, nn) == (k, n) and "fp16" in table[(kk, nn, m)])
        for c in _shown(result) + ["floor"]:
            xs = [m for m in ms if c in table[(k, n, m)]]
            ys = [table[(k, n, m)]["fp16"] / table[(k, n, m)][c] for m in xs]
            if xs:
                ax.plot(xs, ys, marker="o", linestyle="--" if c == "floor" else "-", label=c)
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"K={k}, N={n}")
        ax.set_xlabel("M (tokens per forward)")
        ax.set_ylabel(f"speed-up over {result['meta'].get('dtype', 'fp16')}")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"int4 (group {result['meta']['group_size']}) linear layers on {result['meta']['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels.md").write_text(markdown(result))
    try:
        plot(result, out_dir / "kernels.png")
    except ImportError as exc:
        print(f"no plot: {exc}")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    write_report(json.loads(source.read_text()), Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent)
