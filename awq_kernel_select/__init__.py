"""awq_kernel_select: which AWQ kernel should this GPU run for this workload, and how fast is it?"""

from .detect import ComputeCapability, Detection, GpuInfo, detect_compute_capability
from .policy import DEFAULT_TABLE, KernelSpec, PolicyTable, register_kernel
from .probes import Target, Verdict, register_probe
from .engines import EngineChoice, engine_choice, engine_choice_for
from .export import ExportError, ExportReport, export
from .fuse import FuseReport, GatedMLP, fuse_projections
from .load import load_quantized
from .quantize import QuantizeReport, quantize
from .runners import AutoAWQRunner, LoadRequest, OursRunner, Runner
from .select import INTERACTIVE, SERVING, NoKernelError, Selection, Workload, select_kernel

CC = ComputeCapability

__version__ = "0.1.0"


__all__ = [
    "AutoAWQRunner",
    "CC",
    "ComputeCapability",
    "DEFAULT_TABLE",
    "Detection",
    "EngineChoice",
    "ExportError",
    "ExportReport",
    "FuseReport",
    "GatedMLP",
    "GpuInfo",
    "INTERACTIVE",
    "KernelSpec",
    "LoadRequest",
    "NoKernelError",
    "OursRunner",
    "PolicyTable",
    "QuantizeReport",
    "Runner",
    "SERVING",
    "Selection",
    "Target",
    "Verdict",
    "Workload",
    "detect_compute_capability",
    "engine_choice",
    "engine_choice_for",
    "export",
    "fuse_projections",
    "load_quantized",
    "quantize",
    "register_kernel",
    "register_probe",
    "select_kernel",
]
