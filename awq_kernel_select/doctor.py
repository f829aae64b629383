"""``awq-kernel-select doctor``: everything that decides what can run here, in one report, and
each known failure mapped to its fix and where that fact comes from.

The report lists the GPUs and how they were found, the driver and CUDA runtime, the versions of
torch, triton, transformers and autoawq, whether transformers is in the supported range, every
probe's verdict (the requirements policy rows name), and the kernel ``select_kernel`` picks. A
failed probe, or a failure text given to :func:`diagnose`, is matched against
:data:`KNOWN_FAILURES`.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .detect import Detection, detect_compute_capability
from .probes import PROBES, Target, check
from .select import NoKernelError, select_kernel
from .stack import StackError, check_transformers


@dataclass(frozen=True)
class KnownFailure:
    """A failure seen in the field: the text that identifies it, what it means, what to do, and
    the source of the fact."""

    pattern: str  # a regular expression searched in the failure text
    meaning: str
    fix: str
    source: str

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    KnownFailure(
        r"libcudart\.so\.12",
        "AutoAWQ's compiled kernels (awq_ext, awq_v2_ext) are built against CUDA 12; this torch ships another CUDA "
        "runtime (13 on torch 2.9+ CUDA 13 wheels), so they cannot load",
        "use this library's kernels (kernel='auto' picks them); AutoAWQ's own kernels would need a torch built for "
        "CUDA 12 or AutoAWQ_kernels rebuilt for this CUDA",
        "AutoAWQ_kernels setup.py (CUDA 12 builds); ImportError seen on torch 2.11+cu130"),
    KnownFailure(
        r"undefined symbol: .*c10|undefined symbol: _ZN3c10",
        "a compiled extension was built for another torch version (its C++ symbols do not match this torch's)",
        "install the extension built for this torch (pip install --force-reinstall --no-cache-dir NAME), or the "
        "torch version it was built for",
        "PyTorch C++ extensions: no ABI stability between torch releases (torch docs, 'Custom C++ and CUDA "
        "Extensions')"),
    KnownFailure(
        r"m16n8k16",
        "a kernel uses the m16n8k16 tensor-core instruction with bf16, which needs compute capability 8.0; this "
        "GPU is older (7.5, Turing)",
        "use a row that runs on 7.5 (autoawq_gemm with awq_ext, or torch_dequant), or fp16 activations",
        "PTX ISA, mma.sync.aligned.m16n8k16 (.bf16 requires sm_80)"),
    KnownFailure(
        r"PytorchGELUTanh",
        "transformers 4.57.x removed PytorchGELUTanh, which autoawq 0.2.9 imports (5.0 restored it as an alias)",
        "import AutoAWQ through this library (stack.require_awq adds the alias), or use transformers 4.51-4.56 "
        "or 5.x",
        "transformers 4.57.0 and 5.0 activations.py; docs/compatibility.md"),
    KnownFailure(
        r"transformers\.models\.qwen3|transformers [0-9.]+ is too old",
        "transformers before 4.51: autoawq 0.2.9 imports transformers.models.qwen3, added in 4.51.0",
        "pip install 'transformers>=4.51,<6'",
        "awq/models/qwen3.py in autoawq 0.2.9; docs/compatibility.md"),
    KnownFailure(
        r"CUDA_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES hides the GPUs from this process (empty, -1, or indices that do not exist)",
        "unset CUDA_VISIBLE_DEVICES or set it to the indices `nvidia-smi -L` lists",
        "CUDA Programming Guide, 'CUDA Environment Variables'"),
)


def diagnose(text: str) -> list[KnownFailure]:
    """The known failures whose pattern occurs in ``text`` (an error message or a probe's reason)."""
    return [known for known in KNOWN_FAILURES if known.matches(text)]


@dataclass(frozen=True)
class ProbeResult:
    requirement: str
    ok: bool
    reason: str
    known: tuple[KnownFailure, ...] = ()


@dataclass(frozen=True)
class DoctorReport:
    versions: dict[str, str | None]
    detection: Detection
    transformers_check: str
    probes: tuple[ProbeResult, ...]
    selection: str
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["detection"] = {"source": self.detection.source, "summary": self.detection.summary(),
                            "cuda_visible_devices": self.detection.cuda_visible_devices,
                            "attempts": [list(a) for a in self.detection.attempts]}
        return out

    def format(self) -> str:
        lines = ["versions:"]
        lines += [f"  {name}: {value or 'not installed'}" for name, value in self.versions.items()]
        lines += ["GPUs:"] + [f"  {line}" for line in self.detection.summary().splitlines()]
        lines += [f"transformers: {self.transformers_check}", "requirements (what policy rows need):"]
        for probe in self.probes:
            lines.append(f"  {'ok  ' if probe.ok else 'FAIL'} {probe.requirement}: {probe.reason}")
            for known in probe.known:
                lines += [f"       means: {known.meaning}", f"       fix:   {known.fix}",
                          f"       source: {known.source}"]
        lines.append(f"selected for one user: {self.selection}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    import torch

    return {"python": platform.python_version(), "awq-kernel-select": _version("awq-kernel-select"),
            "torch": torch.__version__, "torch CUDA runtime": torch.version.cuda or "none (a CPU-only torch build)", "triton": _version("triton"),
            "transformers": _version("transformers"), "autoawq": _version("autoawq")}


def _visibility_note(detection: Detection) -> str | None:
    """A note when CUDA_VISIBLE_DEVICES is set and no GPU is visible through it."""
    value = detection.cuda_visible_devices
    if value is None or detection.gpus:
        return None
    return (f"no GPU is visible and CUDA_VISIBLE_DEVICES={value!r}: it may hide the GPUs (unset it, or set it to "
            "the indices `nvidia-smi -L` lists)")


def doctor(detection: Detection | None = None) -> DoctorReport:
    """The report for this machine (``detection`` given: for that detection, as tests do)."""
    detection = detect_compute_capability() if detection is None else detection
    primary = detection.primary
    target = (Target("cuda", primary.capability, name=primary.name) if primary and primary.capability
              else Target("cpu"))
    try:
        transformers_check = f"{check_transformers()} is in the supported range (>=4.51,<6)"
    except StackError as exc:
        transformers_check = f"FAIL: {exc}"
    probes = []
    for name in sorted(PROBES):
        verdict = check(name, target)
        probes.append(ProbeResult(name, verdict.ok, verdict.reason,
                                  tuple(diagnose(verdict.reason)) if not verdict.ok else ()))
    try:
        chosen = select_kernel(workload="interactive", detection=detection) if primary else \
            select_kernel(workload="interactive", device="cpu")
        selection = f"{chosen.name} ({chosen.reasons[0]})"
        if chosen.plan is not None and primary:
            selection += f"; dispatch plan: {chosen.plan.describe()}"
    except NoKernelError as exc:
        selection = f"none: {exc}"
    notes = [note for note in (_visibility_note(detection),) if note]
    if transformers_check.startswith("FAIL"):
        notes += [f"{k.meaning}: {k.fix} ({k.source})" for k in diagnose(transformers_check)]
    if os.environ.get("AWQ_KERNEL_SELECT_TUNED"):
        notes.append(f"AWQ_KERNEL_SELECT_TUNED={os.environ['AWQ_KERNEL_SELECT_TUNED']} replaces the shipped per-GPU files")
    return DoctorReport(_versions(), detection, transformers_check, tuple(probes), selection, tuple(notes))
