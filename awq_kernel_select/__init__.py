"""awq_kernel_select: which AWQ kernel should this GPU run for this workload, and how fast is it?"""

from typing import Any

from .detect import ComputeCapability, Detection, GpuInfo, detect_compute_capability
from .policy import DEFAULT_TABLE, KernelSpec, PolicyTable, register_kernel
from .probes import Target, Verdict, register_probe
from .select import INTERACTIVE, SERVING, NoKernelError, Selection, Workload, select_kernel

CC = ComputeCapability

__version__ = "0.1.0"


def quantize(*args: Any, **kwargs: Any) -> Any:
    """See :func:`awq_kernel_select.quantize.quantize` (imported on first use: it loads AutoAWQ)."""
    from .quantize import quantize as _quantize

    return _quantize(*args, **kwargs)


def load_quantized(*args: Any, **kwargs: Any) -> Any:
    """See :func:`awq_kernel_select.load.load_quantized` (imported on first use: it loads AutoAWQ)."""
    from .load import load_quantized as _load

    return _load(*args, **kwargs)


__all__ = [
    "CC",
    "ComputeCapability",
    "DEFAULT_TABLE",
    "Detection",
    "GpuInfo",
    "INTERACTIVE",
    "KernelSpec",
    "NoKernelError",
    "PolicyTable",
    "SERVING",
    "Selection",
    "Target",
    "Verdict",
    "Workload",
    "detect_compute_capability",
    "load_quantized",
    "quantize",
    "register_kernel",
    "register_probe",
    "select_kernel",
]
