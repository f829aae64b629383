"""This library's kernels for AutoAWQ's layouts: Triton on GPUs, plain torch elsewhere."""

from .dispatch import PATHS, KernelPath, awq_linear, choose_path
from .reference import reference_linear

__all__ = ["PATHS", "KernelPath", "awq_linear", "choose_path", "reference_linear"]
