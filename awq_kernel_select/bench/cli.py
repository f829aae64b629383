"""``awq-kernel-select bench``: the README's main job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="an AWQ checkpoint folder (default: embedded model)")
    parser.add_argument("--shape", choices=["llama2-7b", "smollm2-135m"],
                        help="the embedded model's shapes: llama2-7b (default on a GPU; group 128) or smollm2-135m "
                             "(576-wide layers, group 64: a small model bound by launches); default on the CPU: "
                             "a tiny Llama")
    parser.add_argument("--layers", type=int, help="layers of the embedded model (default: the shape's, 32 or 30, "
                        "on a GPU; 2 on the CPU)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (default: 128 on a GPU, 16 on the CPU)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated (default: 32 on a GPU, 4 on the CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="the decode-step sweep (default: 1 2 4 8 16 32 64 on a GPU, 1 2 4 on the CPU)")
    parser.add_argument("--reps", type=int, help="repetitions of each timing (default: 10 on a GPU, 3 on the CPU)")
    parser.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph decode step")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the decode step under torch.compile (default: on a GPU only)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--no-fuse", action="store_true",
                        help="skip the aks_gemv_fused variant (q/k/v and gate/up as one linear each, SiLU x up "
                             "in the gate/up kernel)")
    parser.add_argument("--no-pdl", action="store_true",
                        help="skip the compiled variants with programmatic dependent launch (sm90+)")
    parser.add_argument("--no-decode-attention", action="store_true",
                        help="skip the compiled PDL variants whose decode attention runs this library's kernel")
    parser.add_argument("--no-combo-kernels", action="store_true",
                        help="compile without inductor's combo kernels (small independent kernels as one launch)")
    parser.add_argument("--no-save", action="store_true", help="do not store the measured crossover")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for JSON, markdown, PNG")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of the table")


def run_from_args(args: argparse.Namespace) -> int:
    import json

    from .report import table, write_all
    from .run import BenchConfig, run_benchmark

    for option in ("layers", "prompt_len", "new_tokens", "reps"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} {value}: must be >= 1")
    if args.batch_sizes is not None and min(args.batch_sizes) < 1:
        raise ValueError(f"--batch-sizes {' '.join(map(str, args.batch_sizes))}: each must be >= 1")
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True))
    batch_sizes = None if args.batch_sizes is None else tuple(args.batch_sizes)
    cfg = BenchConfig(model=args.model, shape=args.shape, layers=args.layers, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                      batch_sizes=batch_sizes, reps=args.reps, graph=not args.no_graph,
                      save_measured=not args.no_save, compile=args.compile,
                      compile_backend=args.compile_backend, fuse=not args.no_fuse, pdl=not args.no_pdl,
                      combo_kernels=not args.no_combo_kernels, decode_attention=not args.no_decode_attention,
                      progress=progress)
    result = run_benchmark(cfg)
    written = write_all(result, args.out)
    print(json.dumps(result.to_dict(), indent=1, default=str) if args.json else table(result))
    print(f"\nwrote {', '.join(str(p) for p in written)} in {result.wall_s:.0f} s", file=sys.stderr)
    return 0
