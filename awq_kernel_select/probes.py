"""Can this kernel actually run here?  Each requirement name maps to a probe -> Verdict.

A policy row lists the requirements it needs (``requires=("awq_ext",)``); :func:`check` runs the
matching probe once per process (cached) and keeps the *reason* it failed, e.g. AutoAWQ's
``awq_ext`` raising ``ImportError: libcudart.so.12: cannot open shared object file`` on a
CUDA 13 stack. Add a probe for a new requirement with :func:`register_probe`.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

from .detect import ComputeCapability


@dataclass(frozen=True)
class Verdict:
    """``ok`` and why. ``bool(verdict)`` is ``ok``, so ``if check(...):`` reads right."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Target:
    """What a kernel would run on: a device kind and, for CUDA, its compute capability."""

    device: str  # "cuda", "rocm", "cpu", "xpu"
    capability: ComputeCapability | None = None
    arch: str | None = None  # gfx arch on ROCm
    name: str | None = None  # the GPU's name, when detected (keys measured results)
    multiprocessors: int | None = None  # its SM count, when detected (tiles are per chip)

    def __str__(self) -> str:
        if self.device == "cuda" and self.capability is not None:
            return f"cuda (compute capability {self.capability})"
        return f"{self.device} ({self.arch})" if self.arch else self.device


#: A probe answers for a target; most ignore it (an import works or not, whatever the GPU).
Probe = Callable[[Target], Verdict]


def import_probe(module: str, what: str) -> Probe:
    """A probe that imports ``module`` and reports the exception text when that fails."""

    def probe(target: Target) -> Verdict:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, OSError from a missing .so, RuntimeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Verdict(False, f"{what} ({module}) could not load: {type(exc).__name__}: {first}")
        return Verdict(True, f"{what} ({module}) imports")

    return probe


def _triton_gpu(target: Target) -> Verdict:
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return Verdict(False, f"triton could not load: {type(exc).__name__}: {exc}")
    import torch

    if not torch.cuda.is_available():
        return Verdict(False, "triton imports, but torch sees no GPU for it to compile for")
    return Verdict(True, f"triton {triton.__version__} with a GPU")


def _torch_cuda_arch(target: Target) -> Verdict:
    """Does this torch build carry code for the target GPU (``torch.cuda.get_arch_list()``)?"""
    import torch

    if target.device in ("cpu", "xpu", "rocm"):
        return Verdict(True, f"torch runs on {target.device}")
    if target.capability is None:
        return Verdict(False, "no compute capability known for the CUDA target")
    arches = torch.cuda.get_arch_list() if torch.version.cuda else []
    return torch_has_code_for(target.capability, arches, torch.__version__)


def torch_has_code_for(cap: ComputeCapability, arches: list[str], version: str) -> Verdict:
    """Can a torch built for ``arches`` run on ``cap``?

    A cubin for ``sm_XY`` runs on the same major with minor >= Y (so ``sm_80`` serves 8.6); PTX
    (``compute_XY``) is compiled by the driver for any newer GPU.
    """
    def parse(entry: str, prefix: str) -> tuple[int, int] | None:
        digits = entry[len(prefix):]
        if not entry.startswith(prefix) or not digits.isdigit() or len(digits) < 2:
            return None  # also skips arch-specific variants such as sm_90a
        return int(digits[:-1]), int(digits[-1])

    cubins = [c for c in (parse(a, "sm_") for a in arches) if c]
    ptx = [c for c in (parse(a, "compute_") for a in arches) if c]
    if any(major == cap.major and minor <= cap.minor for major, minor in cubins):
        return Verdict(True, f"torch {version} has code for sm_{cap.to_int()}")
    if any(c <= tuple(cap) for c in ptx):
        return Verdict(True, f"torch {version} has PTX that the driver can compile for sm_{cap.to_int()}")
    listed = ", ".join(arches) or "none: a CPU-only build"
    return Verdict(False, f"torch {version} has no code for sm_{cap.to_int()} (it has {listed})")


#: requirement name -> probe. The names are what policy rows put in ``requires``.
PROBES: dict[str, Probe] = {
    "awq_ext": import_probe("awq_ext", "AutoAWQ's CUDA kernels"),
    "awq_v2_ext": import_probe("awq_v2_ext", "AutoAWQ's GEMV_Fast kernels"),
    "marlin_cuda": import_probe("marlin_cuda", "the Marlin kernels"),
    "exl_ext": import_probe("exl_ext", "AutoAWQ's ExLlama v1 kernels"),
    "exlv2_ext": import_probe("exlv2_ext", "AutoAWQ's ExLlama v2 kernels"),
    "ipex": import_probe("intel_extension_for_pytorch", "Intel Extension for PyTorch"),
    "triton_gpu": _triton_gpu,
    "torch_cuda_arch": _torch_cuda_arch,
}


def register_probe(name: str, probe: Probe) -> None:
    """Add or replace the probe for requirement ``name`` (clears the cache)."""
    PROBES[name] = probe
    check.cache_clear()


@functools.lru_cache(maxsize=None)
def check(name: str, target: Target) -> Verdict:
    """Run the probe for ``name`` once per process and target; unknown names fail."""
    probe = PROBES.get(name)
    if probe is None:
        return Verdict(False, f"no probe is registered for requirement {name!r}")
    return probe(target)
