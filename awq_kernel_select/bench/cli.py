"""``awq-kernel-select bench``: the README's main job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="an AWQ checkpoint folder (default: embedded model)")
    parser.add_argument("--layers", type=int, default=32, help="layers of the embedded 7B-shaped model")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--reps", type=int, default=10)
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

    if args.layers < 1 or args.prompt_len < 1 or args.new_tokens < 1 or args.reps < 1:
        raise ValueError("--layers, --prompt-len, --new-tokens and --reps must be >= 1")
    progress = (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg = BenchConfig(model=args.model, layers=args.layers, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                      batch_sizes=tuple(args.batch_sizes), reps=args.reps, graph=not args.no_graph,
                      save_measured=not args.no_save, compile=args.compile,
                      compile_backend=args.compile_backend, fuse=not args.no_fuse, pdl=not args.no_pdl,
                      combo_kernels=not args.no_combo_kernels, decode_attention=not args.no_decode_attention,
                      progress=progress)
    result = run_benchmark(cfg)
    written = write_all(result, args.out)
    print(json.dumps(result.to_dict(), indent=1, default=str) if args.json else table(result))
    print(f"\nwrote {', '.join(str(p) for p in written)} in {result.wall_s:.0f} s", file=sys.stderr)
    return 0
