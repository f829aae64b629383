"""``awq-kernel-select``: detect | select | table | doctor | bench.

Errors are printed as one line (``error: ...``) with exit code 2; no tracebacks for user errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict
from typing import Any, Sequence

from .detect import Detection, DeviceIndexError, detect_compute_capability
from .engines import NoEngineRowError
from .policy import DEFAULT_TABLE
from .select import NoKernelError, Workload, select_kernel
from .stack import StackError, check_transformers


def _detection_dict(detection: Detection) -> dict[str, Any]:
    return {
        "source": detection.source,
        "cuda_visible_devices": detection.cuda_visible_devices,
        "gpus": [
            {**asdict(g), "capability": list(g.capability) if g.capability else None}
            for g in detection.gpus
        ],
        "attempts": [{"source": s, "outcome": o} for s, o in detection.attempts],
    }


def _cmd_detect(args: argparse.Namespace) -> int:
    detection = detect_compute_capability(args.device)
    if args.json:
        print(json.dumps(_detection_dict(detection), indent=2))
    else:
        print(detection.summary())
    return 0


def _workload(args: argparse.Namespace) -> Workload:
    if args.batch_size is not None:
        return Workload.parse(args.batch_size)
    return Workload.parse(args.workload)


WHAT_IF_ASSUMPTIONS = ("triton_gpu", "torch_cuda_arch")


def parse_capability(text: str) -> tuple[int, int]:
    """``--capability MAJOR.MINOR`` (e.g. 8.6, 9.0, 12.0), checked."""
    major, dot, minor = text.strip().partition(".")
    if not major.isdigit() or (dot and not minor.isdigit()) or int(major) < 1:
        raise ValueError(f"--capability {text!r}: expected a compute capability MAJOR.MINOR such as 8.6, 9.0 or 12.0")
    return int(major), int(minor or 0)


def _cmd_select(args: argparse.Namespace) -> int:
    capability = parse_capability(args.capability) if args.capability is not None else None
    detection = None if capability else detect_compute_capability(args.device)
    # A what-if about a GPU (no detection runs): probes that need the GPU itself are assumed met,
    # imports (AutoAWQ's extensions, Triton) are still checked on this machine.
    assume = WHAT_IF_ASSUMPTIONS if capability else ()
    selection = select_kernel(
        capability,
        _workload(args),
        args.checkpoint_version,
        detection=detection,
        force=args.kernel,
        assume=assume,
    )
    if args.json:
        out = selection.to_dict()
        if detection is not None:
            out["detection"] = _detection_dict(detection)
        print(json.dumps(out, indent=2))
    else:
        if detection is not None:
            print(detection.summary())
            print()
        print(selection.explain())
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    report = doctor()
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.format())
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    print(DEFAULT_TABLE.format())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run_from_args  # the benchmark lives apart from the core

    check_transformers()

    return run_from_args(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    check_transformers()
    report = export(args.path, args.output, format=args.format, overwrite=args.overwrite)
    print(report.summary())
    return 0


def _cmd_engine(args: argparse.Namespace) -> int:
    from .engines import engine_choice_for

    capability = parse_capability(args.capability) if args.capability else None
    for engine in args.engine:
        print(engine_choice_for(args.path, engine, capability).explain())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="awq-kernel-select",
        description="Which AWQ kernel should this GPU run for this workload, and how fast is it?",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", help="list the visible GPUs and their compute capability")
    detect.add_argument("--device", type=int, default=None, help="only this GPU index")
    detect.add_argument("--json", action="store_true", help="print JSON")
    detect.set_defaults(func=_cmd_detect)

    select = sub.add_parser("select", help="pick the AWQ kernel for this GPU and workload")
    group = select.add_mutually_exclusive_group()
    group.add_argument("--workload", choices=["interactive", "serving"], default="interactive")
    group.add_argument("--batch-size", type=int, default=None, help="tokens per decode step")
    select.add_argument("--capability", help="a compute capability such as 8.6 instead of detecting")
    select.add_argument("--checkpoint-version", choices=["gemm", "gemv", "gemv_fast", "marlin"])
    select.add_argument("--kernel", default=None, help="force this kernel (still checked)")
    select.add_argument("--device", type=int, default=None, help="GPU index to select for")
    select.add_argument("--json", action="store_true", help="print JSON")
    select.set_defaults(func=_cmd_select)

    table = sub.add_parser("table", help="print the policy table")
    table.set_defaults(func=_cmd_table)

    doctor = sub.add_parser("doctor", help="what decides what can run here: GPUs, versions, probes, known failures")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=_cmd_doctor)
    exp = sub.add_parser("export", help="a quantized checkpoint in another format (lossless): compressed-tensors "
                                        "for vLLM and transformers 5, or AutoAWQ's GEMM layout")
    exp.add_argument("path", help="an AutoAWQ (GEMM or GEMV) or compressed-tensors W4A16 checkpoint folder")
    exp.add_argument("output", help="the folder to write (created; must be empty unless --overwrite)")
    exp.add_argument("--format", choices=["compressed-tensors", "autoawq-gemm"], default="compressed-tensors")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=_cmd_export)
    eng = sub.add_parser("engine", help="what vLLM or transformers would run for a checkpoint on a GPU, and what "
                                        "to export for it first")
    eng.add_argument("path", help="an AutoAWQ or compressed-tensors checkpoint folder")
    eng.add_argument("--engine", nargs="+", choices=["vllm", "transformers"], default=["vllm", "transformers"])
    eng.add_argument("--capability", help="the GPU's compute capability, e.g. 9.0 (none: the CPU)")
    eng.set_defaults(func=_cmd_engine)
    bench = sub.add_parser("bench", help="GEMM vs GEMV latency on a model (embedded 7B-shaped one by default)")
    from .bench.cli import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # AutoAWQ prints a multi-line deprecation notice at import; keep the CLI's output readable
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (NoKernelError, NoEngineRowError, DeviceIndexError, StackError, ValueError, KeyError,
            FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
