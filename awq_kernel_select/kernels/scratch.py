"""Scratch buffers the kernels keep across calls (split-K partial sums, tickets), per stream.

A buffer kept across calls must not be allocated inside a CUDA-graph memory pool that torch
manages: ``torch.compile(mode="reduce-overhead")`` routes every allocation of the thread that
warms up or records one of its graphs into the graph's private pool, and after the run it
refuses any tensor left there that is not an output ("Detected N tensor(s) in the cudagraph
pool not tracked as outputs"). So new buffers are allocated on a helper thread, whose
allocations are not routed; it zeroes them on its own stream and waits, so that they are ready
for any stream. While the calling stream is being captured (``torch.cuda.graph``), allocating
on another thread could break the capture, so the buffer is allocated here instead: the graph
keeps it in its pool and replays the zeroing with the rest.
"""

from __future__ import annotations

import concurrent.futures
from typing import Sequence

import torch

_HELPER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="awq-kernel-select-scratch")


def current_stream(device: torch.device) -> int:
    """The raw handle of the stream launches on ``device`` go to now (0 off the GPU)."""
    if device.type != "cuda":
        return 0
    return int(torch._C._cuda_getCurrentRawStream(device.index if device.index is not None else
                                                   torch.cuda.current_device()))


def _zeros(device: torch.device, specs: Sequence[tuple[int, torch.dtype]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(numel, dtype=dtype, device=device) for numel, dtype in specs)


def _zeros_synchronized(device: torch.device, specs: Sequence[tuple[int, torch.dtype]]) -> tuple[torch.Tensor, ...]:
    with torch.cuda.device(device):
        buffers = _zeros(device, specs)
        torch.cuda.current_stream(device).synchronize()
    return buffers


def persistent_zeros(device: torch.device, specs: Sequence[tuple[int, torch.dtype]]) -> tuple[torch.Tensor, ...]:
    """One zeroed 1-D tensor per ``(numel, dtype)``, outside torch's CUDA-graph pools (see the
    module docstring). The caller keeps them for the life of the process: kernels on other
    streams, or captured graphs, may still use them, and the helper's stream does not know."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return _zeros(device, specs)
    return _HELPER.submit(_zeros_synchronized, device, specs).result()
