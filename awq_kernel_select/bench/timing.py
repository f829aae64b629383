"""Timing primitives: CUDA events, warm-up thrown away, medians, CUDA-graph replays.

``time_graph`` captures a *sequence* of calls (e.g. one per weight copy, so that no call reads
weights left in L2 by the previous one) in one CUDA graph and times its replays: launch
overhead is gone and what remains is the kernels' own time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call time in microseconds over ``reps`` repetitions (after warm-up)."""

    median_us: float
    p10_us: float
    p90_us: float
    reps: int

    @classmethod
    def from_samples(cls, samples_us: Sequence[float]) -> Timing:
        if not samples_us:
            raise ValueError("no timing samples")
        ordered = sorted(samples_us)
        return cls(statistics.median(ordered), quantile(ordered, 0.1), quantile(ordered, 0.9), len(ordered))


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples."""
    if not ordered:
        raise ValueError("no samples")
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


def eager_samples(fn: Callable[[], Any], *, reps: int = 50, warmup: int = 5) -> list[float]:
    """Microseconds per call, each call timed by its own pair of CUDA events (launch overhead
    included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = _event(), _event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0)
    return samples


def time_eager(fn: Callable[[], Any], *, reps: int = 50, warmup: int = 5) -> Timing:
    """Each call timed by its own pair of CUDA events (launch overhead included)."""
    return Timing.from_samples(eager_samples(fn, reps=reps, warmup=warmup))


def capture_graph(calls: Sequence[Callable[[], Any]], *, warmup: int = 3
                  ) -> tuple[torch.cuda.CUDAGraph, list[Any]]:
    """``calls`` captured once in a CUDA graph (after ``warmup`` rounds outside it: compile,
    autotune and allocate), replayed once; and what each call returned in the capture (the
    graph's output buffers: each replay rewrites them)."""
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = [call() for call in calls]
    graph.replay()
    torch.cuda.synchronize()
    return graph, outputs


def time_replays(graph: torch.cuda.CUDAGraph, *, reps: int = 30, per_sample: int = 1, calls: int = 1) -> Timing:
    """``reps`` samples, each ``per_sample`` replays between one pair of CUDA events, divided by
    ``per_sample * calls``. With ``per_sample = 1`` a sample holds the graph's launch too (the
    GPU waits while the host submits it); with more, the host submits the next replays while the
    GPU runs the first, and a sample is the GPU's time alone."""
    samples = []
    for _ in range(reps):
        start, end = _event(), _event()
        start.record()
        for _ in range(per_sample):
            graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / (per_sample * calls))
    return Timing.from_samples(samples)


def time_graph(calls: Sequence[Callable[[], Any]], *, reps: int = 30, warmup: int = 3) -> Timing:
    """Capture ``calls`` once in a CUDA graph; each replay's time divided by ``len(calls)``."""
    graph, _ = capture_graph(calls, warmup=warmup)
    timing = time_replays(graph, reps=reps, calls=len(calls))
    del graph
    return timing


def time_graph_both(calls: Sequence[Callable[[], Any]], *, reps: int = 30, warmup: int = 3,
                    back_to_back: int = 10) -> tuple[Timing, Timing]:
    """:func:`time_graph`, and the same graph timed ``back_to_back`` replays per sample (the
    GPU's time alone: :func:`time_replays`)."""
    graph, _ = capture_graph(calls, warmup=warmup)
    one = time_replays(graph, reps=reps, calls=len(calls))
    many = time_replays(graph, reps=reps, per_sample=back_to_back, calls=len(calls))
    del graph
    return one, many


def copy_bandwidth(n_bytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(n_bytes // 2, dtype=torch.float16, device="cuda").uniform_()
    dst = torch.empty_like(src)
    timing = time_eager(lambda: dst.copy_(src), reps=reps, warmup=3)
    return 2 * n_bytes / (timing.median_us * 1e-6)


def copies_to_evict_l2(bytes_per_copy: int, l2_bytes: int = 50 * 2**20, factor: int = 3) -> int:
    """How many distinct weight copies to rotate so that none is served from L2."""
    return max(2, -(-factor * l2_bytes // max(bytes_per_copy, 1)))
