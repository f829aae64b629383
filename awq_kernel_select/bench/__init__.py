"""Benchmarks: kernel and model latency, measured with CUDA events. Separate from the core
library (nothing in ``awq_kernel_select`` outside this package imports it)."""
