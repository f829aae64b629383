"""Tune the M = 1 tiles inside the model: a decode step's time for each candidate tile of each linear.

The tuned table's tiles were chosen in isolation (``kernels.py --sweep``: one shape called back
to back). Inside a model the same kernel can run slower: a profile of the compiled 7B-shaped
step (``decode_profile.py``) had the fused q/k/v linear at 22.4 us where its isolated sweep said
17.2. So here the yardstick is the whole step: the embedded model (``awq-kernel-select bench``'s,
q/k/v and gate/up fused), compiled once (inductor, fullgraph, static KV cache); for each linear
shape in turn, each candidate tile is put into the model's dispatch plan (the other shapes as
shipped), the compiled step is captured in a CUDA graph afresh and its replays timed. The best candidates are timed again in turn (``--rounds``), the fastest is adopted for
the next shapes, and at the end the adopted tiles and the shipped ones are timed in turn, compiled
and uncompiled, with the logits checked against the shipped tiles'. Writes ``model-tiles.json``
with the adopted tiles; ``--save FILE`` adds them to a measured-facts file (``measured.py``'s one
writer; the package's own file: ``awq_kernel_select/gpus/<gpu>.json``). Needs a CUDA GPU::

    python -m benchmarks.model_tiles --out DIR        # ~5 min on an H100
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch


from awq_kernel_select.bench.latency import prefilled_static_cache, random_prompt, repeatable_step
from awq_kernel_select.bench.model import embedded_models
from awq_kernel_select.bench.timing import time_graph
from awq_kernel_select.fuse import fuse_projections
from awq_kernel_select.detect import cuda_device
from awq_kernel_select.kernels import dispatch
from awq_kernel_select.kernels.dispatch import DispatchPlan, TunedEntry
from awq_kernel_select.kernels.matmul import MatmulConfig
from awq_kernel_select.measured import save_measurement
from awq_kernel_select.modules import drop_kept_launches, set_layout, set_plan

SHAPES = [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)]  # (K, N): q/k/v, o, gate/up, down
GROUP = 128


def candidates() -> list[MatmulConfig]:
    return [MatmulConfig(1, bn, 128, split, warps, 3, prefetch=pf, interleave_k=True)
            for bn, split, warps, pf in itertools.product((128, 256), (4, 8, 16, 32), (4, 8), (False, True))]


def use_tiles(tiles: dict[tuple[int, int], MatmulConfig], plan: DispatchPlan, model: torch.nn.Module) -> None:
    """The shipped tiles with ``tiles`` as the M = 1 GEMV-layout entries of their shapes, put into
    the model's plan in place (the compiled model keeps calling with the same plan), every
    decided shape and kept launch dropped."""
    table: Any = plan.tiles
    table.update({("gemv", k, n, GROUP, 1): TunedEntry(cfg, None) for (k, n), cfg in tiles.items()})
    plan.forget()
    drop_kept_launches(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--top", type=int, default=4, help="candidates per shape timed again in turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--final-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/model-tiles"))
    parser.add_argument("--save", type=Path, help="add the adopted tiles to this measured-facts file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    built = embedded_models(args.layers, device)
    model = set_layout(copy.deepcopy(built.quantized), "gemv")
    del built
    base = dispatch.default_plan(device)
    plan = dataclasses.replace(base, tiles=dict(base.tiles))
    set_plan(model, plan)
    fuse_projections(model)
    prompt = random_prompt(model, 1, 128, device)
    shipped = {shape: base.decide(device, "gemv", 1, shape[1], shape[0], GROUP)[1] for shape in SHAPES}

    with torch.no_grad():
        static, position = prefilled_static_cache(model, prompt)
        step_input = prompt[:, -1:]
        compiled: Any = torch.compile(model.forward, fullgraph=True, dynamic=False)

        eager_once = repeatable_step(model, static, step_input, position)
        compiled_once = repeatable_step(compiled, static, step_input, position)

        def eager_step() -> Any:
            return eager_once().logits

        def compiled_step() -> Any:
            return compiled_once().logits

        started = time.perf_counter()
        use_tiles(shipped, plan, model)
        reference = compiled_step().double()
        compile_s = time.perf_counter() - started

        def step_us(tiles: dict[tuple[int, int], MatmulConfig], step: Callable[[], Any] = compiled_step) -> float:
            use_tiles(tiles, plan, model)
            logits = step().double()
            err = float((logits - reference).norm() / reference.norm())
            assert err < 1e-2, (tiles, err)
            return time_graph([step], reps=args.reps).median_us

        result: dict[str, Any] = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, layers=args.layers,
                                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), compile_s=compile_s,
                                      shipped={f"{k}x{n}": str(c) for (k, n), c in shipped.items()}, shapes=[])
        adopted = dict(shipped)
        for k, n in SHAPES:
            rows = []
            for cfg in candidates():
                try:
                    us = step_us({**adopted, (k, n): cfg})
                except (ValueError, AssertionError) as exc:
                    print(f"{k}x{n} {cfg}: skipped ({exc})", flush=True)
                    continue
                rows.append((cfg, us))
            rows.sort(key=lambda r: r[1])
            finalists = list(dict.fromkeys([adopted[(k, n)], *(c for c, _ in rows[:args.top])]))
            again: dict[MatmulConfig, list[float]] = {c: [] for c in finalists}
            for _ in range(args.rounds):
                for cfg in finalists:
                    again[cfg].append(step_us({**adopted, (k, n): cfg}))
            best = min(finalists, key=lambda c: statistics.median(again[c]))
            print(f"{k}x{n}: shipped {adopted[(k, n)]} {statistics.median(again[adopted[(k, n)]]):.1f} us/step, "
                  f"best {best} {statistics.median(again[best]):.1f}; sweep top: "
                  + ", ".join(f"{c} {us:.0f}" for c, us in rows[:4]), flush=True)
            result["shapes"].append(dict(K=k, N=n, sweep=[(str(c), us) for c, us in rows],
                                         finalists={str(c): v for c, v in again.items()}, adopted=str(best)))
            adopted[(k, n)] = best
            (args.out / "model-tiles.json").write_text(json.dumps(result, indent=1))

        final: dict[str, list[float]] = {"shipped": [], "adopted": [], "shipped_uncompiled": [], "adopted_uncompiled": []}
        for _ in range(args.final_rounds):
            final["shipped"].append(step_us(shipped))
            final["adopted"].append(step_us(adopted))
            final["shipped_uncompiled"].append(step_us(shipped, eager_step))
            final["adopted_uncompiled"].append(step_us(adopted, eager_step))
    result["final_us"] = final
    result["tiles"] = [dict(layout="gemv", K=k, N=n, G=GROUP, M=1, config=vars(cfg)) for (k, n), cfg in adopted.items()]
    if args.save is not None:
        gpu = cuda_device(0)
        assert gpu.capability is not None
        save_measurement(gpu.name, (gpu.capability.major, gpu.capability.minor), multiprocessors=gpu.multiprocessors,
                         tiles=result["tiles"], path=args.save)
    print("decode step, CUDA graph (us): " + "; ".join(f"{name} {statistics.median(v):.0f} "
                                                      f"({'/'.join(f'{x:.0f}' for x in v)})" for name, v in final.items()))
    (args.out / "model-tiles.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
