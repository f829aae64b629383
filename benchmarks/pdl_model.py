"""Programmatic dependent launch through a whole compiled decode step: ours, inductor's, both.

Session 5 found that our kernels' PDL (``AWQ_KERNEL_SELECT_PDL=1``) changes nothing in a
model's decode step: the kernel before each linear is inductor's, which never lets its
dependents start early. Inductor can emit PDL too (``torch._inductor.config.triton.enable_pdl``,
``TORCHINDUCTOR_ENABLE_PDL=1``): then every Triton kernel of the compiled step, inductor's and
ours, is launched while the one before it finishes, and waits (``griddepcontrol.wait``) only
before it touches that one's output. cuBLAS (``lm_head``) and cuDNN (attention) take no part.

One process per model and inductor setting (a device-side fault ends the process, and dynamo's
cache does not key on inductor's config): the embedded 7B-shaped model (q/k/v and gate/up fused)
or fp16, compiled with inductor's PDL off or on, captured in a CUDA graph with our PDL off and
on, the graphs' replays timed in turn (``--rounds``) and the logits of every round's last
replay checked against the uncompiled model's. Appends to ``pdl-model.jsonl``. Needs an sm90 GPU::

    for i in 0 1; do python benchmarks/pdl_model.py --inductor-pdl $i --out DIR; done   # ~1 min each on an H100
    python benchmarks/pdl_model.py --model fp16 --inductor-pdl 1 --out DIR

Session 9 added ``--combo-kernels 1`` (inductor launches independent small kernels as one: the
bench's setting since then) and ``--hold-gib N`` (N GiB of other tensors allocated first, as the
bench keeps its other models: made no difference)::

    python benchmarks/pdl_model.py --inductor-pdl 1 --ours-pdl 1 --combo-kernels 1 --out DIR

Session 10 added ``--gate 0`` (the fused model without SiLU x up in the gate/up kernel's
epilogue: the MLP's own SiLU and product run as inductor's kernel, as before session 10) and
times each graph also with 10 replays back to back per pair of events (the host's submission
hidden). One model per process: two models compiled and captured in one process (even with
``torch._dynamo.reset()`` between) ended in an inductor index assertion (``0 <= index < 144``,
the static cache) on the H100; not traced::

    for g in 0 1; do python benchmarks/pdl_model.py --inductor-pdl 1 --ours-pdl 1 --combo-kernels 1 --gate $g --out DIR; done

Session 11 added ``--attention aks``: the decode step's attention on this library's split-KV
kernel (``use_decode_attention``) instead of SDPA (cuDNN)::

    for a in sdpa aks; do python benchmarks/pdl_model.py --inductor-pdl 1 --ours-pdl 1 --combo-kernels 1 --attention $a --out DIR; done
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awq_kernel_select.attention import use_decode_attention  # noqa: E402
from awq_kernel_select.bench.latency import _prefilled_static_cache, _prompt  # noqa: E402
from awq_kernel_select.bench.model import embedded_models  # noqa: E402
from awq_kernel_select.bench.timing import capture_graph, time_replays  # noqa: E402
from awq_kernel_select.fuse import fuse_projections  # noqa: E402
from awq_kernel_select.kernels import matmul  # noqa: E402
from awq_kernel_select.modules import drop_kept_launches, set_layout  # noqa: E402


def ours_pdl(model: torch.nn.Module, on: bool) -> None:
    """Our kernels launched with PDL or not from the next launch on (kept launches dropped)."""
    matmul.USE_PDL = on
    drop_kept_launches(model)


def capture(step: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """``step`` captured in a CUDA graph (after 3 calls outside it), and its output after one replay."""
    graph, (out,) = capture_graph([step])
    return graph, out


def replay_us(graph: torch.cuda.CUDAGraph, reps: int, per_sample: int = 1) -> float:
    """Median of ``reps`` samples of ``per_sample`` replays between one pair of CUDA events
    (``per_sample > 1``: back to back, the host's submission hidden), per replay."""
    return time_replays(graph, reps=reps, per_sample=per_sample).median_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["aks_gemv_fused", "fp16"], default="aks_gemv_fused")
    parser.add_argument("--inductor-pdl", type=int, choices=[0, 1], default=0)
    parser.add_argument("--ours-pdl", type=int, nargs="+", choices=[0, 1], default=[0, 1])
    parser.add_argument("--combo-kernels", type=int, choices=[0, 1], default=0,
                        help="inductor's combo kernels (independent small kernels launched as one)")
    parser.add_argument("--coordinate-descent", type=int, choices=[0, 1], default=0,
                        help="inductor's coordinate_descent_tuning (tunes each kernel's launch settings at compile time)")
    parser.add_argument("--gate", type=int, choices=[0, 1], default=1,
                        help="SiLU x up in the gate/up kernel's epilogue (fuse_projections(gate=...); session 10)")
    parser.add_argument("--attention", choices=["sdpa", "aks"], default="sdpa",
                        help="the decode step's attention: SDPA (cuDNN) or this library's kernel (session 11)")
    parser.add_argument("--hold-gib", type=float, default=0.0,
                        help="GiB of other tensors held on the GPU (allocated first), as the bench's other models")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pdl-model"))
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        sys.exit("this benchmark needs an sm90+ CUDA GPU")
    inductor_triton: Any = torch._inductor.config.triton
    if not hasattr(inductor_triton, "enable_pdl"):
        sys.exit(f"torch {torch.__version__}: inductor has no triton.enable_pdl")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    held = [torch.ones(256 << 20, dtype=torch.float16, device=device) for _ in range(int(args.hold_gib * 2))]
    built = embedded_models(args.layers, device)
    if args.model == "fp16":
        model: torch.nn.Module = built.fp16
    else:
        model = set_layout(copy.deepcopy(built.quantized), "gemv")
        fuse_projections(model, gate=bool(args.gate))
    del built
    if args.attention == "aks":
        use_decode_attention(model)
    inductor_triton.enable_pdl = bool(args.inductor_pdl)
    torch._inductor.config.combo_kernels = bool(args.combo_kernels)
    torch._inductor.config.coordinate_descent_tuning = bool(args.coordinate_descent)
    graphs: dict[str, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    with torch.no_grad():
        prompt = _prompt(model, 1, 128, device)
        static, position = _prefilled_static_cache(model, prompt)
        step_input = prompt[:, -1:]
        reference = model(input_ids=step_input, past_key_values=static, cache_position=position,
                          use_cache=True).logits.double()
        compiled: Any = torch.compile(model.forward, fullgraph=True, dynamic=False)

        def step() -> Any:
            return compiled(input_ids=step_input, past_key_values=static, cache_position=position,
                            use_cache=True).logits

        started = time.perf_counter()
        step()
        compile_s = time.perf_counter() - started
        for ours_on in args.ours_pdl if args.model != "fp16" else [0]:
            ours_pdl(model, bool(ours_on))
            label = (f"{args.model} inductor_pdl={args.inductor_pdl} ours_pdl={ours_on} combo={args.combo_kernels}"
                     + (f" gate={args.gate}" if args.model != "fp16" else "")
                     + (" coordinate_descent" if args.coordinate_descent else "")
                     + f" attention={args.attention}"
                     + (f" holding {len(held) / 2:g} GiB" if held else ""))
            graphs[label] = capture(step)
    errors: dict[str, list[float]] = {name: [] for name in graphs}
    times: dict[str, list[float]] = {name: [] for name in graphs}
    back_to_back: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(args.rounds):
        for name, (graph, logits) in graphs.items():
            times[name].append(replay_us(graph, args.reps))
            back_to_back[name].append(replay_us(graph, max(args.reps // 3, 3), per_sample=10))
            # the logits of the last replay: a race (a kernel reading before it waits) shows here
            errors[name].append(float((logits.double() - reference).norm() / reference.norm()))
    rows = [dict(variant=name, us=times[name], median_us=statistics.median(times[name]),
                 back_to_back_us=back_to_back[name], back_to_back_median_us=statistics.median(back_to_back[name]),
                 max_rel_err_vs_uncompiled=max(errors[name])) for name in graphs]
    for row in rows:
        print(f"{row['variant']:45s} {row['median_us']:8.1f} us  ({'/'.join(f'{x:.0f}' for x in row['us'])}); "
              f"back to back {row['back_to_back_median_us']:.1f} us  "
              f"logits vs uncompiled <= {row['max_rel_err_vs_uncompiled']:.1e}", flush=True)
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, layers=args.layers,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), compile_s=compile_s, rows=rows)
    with open(args.out / "pdl-model.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
