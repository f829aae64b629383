"""Model-level single-query latency: time to first token, time per output token, generation.

Eager numbers are what a user's ``generate`` loop sees (Python and launch overhead included);
the CUDA-graph decode step (static KV cache) shows what the kernels themselves cost.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..stack import crop_cache, static_cache_rewinder
from .timing import Timing, eager_samples, time_eager, time_graph_both


@dataclass(frozen=True)
class LatencyResult:
    variant: str
    batch: int
    ttft: Timing | None  # prompt of ``prompt_len`` tokens -> first token
    decode_eager: Timing | None  # one decode step, eager
    decode_graph: Timing | None  # one decode step, replayed from a CUDA graph
    generate_ms: float | None  # end-to-end generation of ``new_tokens`` tokens (median)
    peak_memory_bytes: int | None
    notes: tuple[str, ...] = field(default=())
    compile_s: float | None = None  # torch.compile variants: the first call's wall time
    # the same graph replayed 10 times per pair of CUDA events: the GPU's time alone, without
    # the host's submission of each replay (which ``decode_graph`` includes)
    decode_graph_back_to_back: Timing | None = None


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _cpu_samples(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def _cpu_timing(fn: Callable[[], Any], reps: int, warmup: int = 1) -> Timing:
    return Timing.from_samples(_cpu_samples(fn, reps, warmup))


def random_prompt(model: Any, batch: int, prompt_len: int, device: torch.device) -> torch.Tensor:
    """The same random prompt for every variant (seeded on the CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen).to(device)


def prefilled_static_cache(model: Any, prompt: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """A static KV cache holding ``prompt`` (prefilled uncompiled) and the next token's position."""
    import transformers

    static_cache: Any = transformers.StaticCache  # transformers' classes carry no type hints
    batch, prompt_len = prompt.shape
    device = prompt.device
    static = static_cache(config=model.config, max_batch_size=batch, max_cache_len=prompt_len + 16,
                          device=device, dtype=torch.float16)
    model(input_ids=prompt, past_key_values=static, cache_position=torch.arange(prompt_len, device=device),
          use_cache=True)
    return static, torch.tensor([prompt_len], device=device)


def repeatable_step(forward: Callable[..., Any], static: Any, step_input: torch.Tensor, position: torch.Tensor
                    ) -> Callable[[], Any]:
    """One decode step of ``forward`` on the prefilled ``static`` cache at ``position`` that
    leaves the cache as it found it: it can run, and replay in a CUDA graph, any number of times."""

    rewind = static_cache_rewinder(static, step_input.shape[1])

    def step() -> Any:
        out = forward(input_ids=step_input, past_key_values=static, cache_position=position, use_cache=True)
        rewind()
        return out

    return step


@torch.no_grad()
def eager_decode_step(model: Any, *, batch: int = 1, prompt_len: int = 128) -> Callable[[], None]:
    """One eager decode step, as ``generate`` runs it: one new token per sequence on a
    ``DynamicCache`` filled by the prompt, cropped back to the prompt after each step so that
    every repetition sees the same cache length."""
    import transformers

    dynamic_cache: Any = transformers.DynamicCache  # transformers' classes carry no type hints
    device = next(model.parameters()).device
    cache = dynamic_cache()
    out = model(input_ids=random_prompt(model, batch, prompt_len, device), past_key_values=cache, use_cache=True)
    step_input = out.logits[:, -1].argmax(-1)[:, None]

    @torch.no_grad()
    def decode_step() -> None:
        model(input_ids=step_input, past_key_values=cache, use_cache=True)
        crop_cache(cache, prompt_len)

    return decode_step


def time_eager_in_turn(steps: dict[str, Callable[[], Any]], *, on_gpu: bool, rounds: int = 10, reps: int = 5
                       ) -> dict[str, Timing]:
    """Eager steps of several models timed in turn: each round times ``reps`` steps of every
    model (after 2 untimed ones), with CUDA events ``on_gpu``, else the host clock. An eager
    step is bound by the host CPU, whose speed drifts by up to 2x over minutes on a shared
    machine; timed in turn, every model sees the same drift."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name] += eager_samples(step, reps=reps, warmup=2) if on_gpu else _cpu_samples(step, reps, 2)
    return {name: Timing.from_samples(v) for name, v in samples.items()}


@torch.no_grad()
def measure(
    model: Any,
    variant: str,
    *,
    batch: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 32,
    reps: int = 10,
    graph: bool = True,
    full: bool = True,
    eager: bool = True,
) -> LatencyResult:
    """Time one model. ``full=False`` measures only the decode steps (the batch sweep);
    ``eager=False`` leaves the eager decode step out (timed in turn with other models instead:
    :func:`time_eager_in_turn`)."""
    import transformers

    dynamic_cache: Any = transformers.DynamicCache  # transformers' classes carry no type hints

    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    prompt = random_prompt(model, batch, prompt_len, device)
    notes: list[str] = []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)

    def timer(fn: Callable[[], Any], n: int) -> Timing:
        return time_eager(fn, reps=n, warmup=2) if on_gpu else _cpu_timing(fn, n)

    def prefill() -> Any:
        cache = dynamic_cache()
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
        return out.logits[:, -1].argmax(-1), cache

    ttft = timer(prefill, reps) if full else None
    decode_eager = timer(eager_decode_step(model, batch=batch, prompt_len=prompt_len), max(reps, 10)) if eager else None

    generate_ms = None
    if full:
        def generate() -> None:
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

        generate_ms = timer(generate, 3).median_us / 1000.0

    decode_graph = back_to_back = None
    if graph and on_gpu:
        try:
            static, position = prefilled_static_cache(model, prompt)
            step_input = prompt[:, -1:]  # any token: the step's time does not depend on it
            decode_graph, back_to_back = time_graph_both([repeatable_step(model, static, step_input, position)],
                                                         reps=max(reps, 20))
        except Exception as exc:  # reported, never hidden
            notes.append(f"CUDA-graph decode failed: {type(exc).__name__}: {str(exc)[:200]}")
    peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
    return LatencyResult(variant, batch, ttft, decode_eager, decode_graph, generate_ms, peak, tuple(notes),
                         decode_graph_back_to_back=back_to_back)


@contextlib.contextmanager
def inductor_pdl(enabled: bool) -> Iterator[None]:
    """Inductor's programmatic dependent launch on or off inside the block (the packed linears'
    operator follows it: ``kernels/op.py``)."""
    import torch._inductor.config as inductor_config

    triton_config: Any = inductor_config.triton
    before = triton_config.enable_pdl
    triton_config.enable_pdl = enabled
    try:
        yield
    finally:
        triton_config.enable_pdl = before


def pdl_available() -> bool:
    """Inductor can emit PDL and this GPU has it (sm90+)."""
    import torch._inductor.config as inductor_config

    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
            and hasattr(inductor_config.triton, "enable_pdl"))


@torch.no_grad()
def measure_compiled(model: Any, variant: str, *, batch: int = 1, prompt_len: int = 128, reps: int = 10,
                     graph: bool = True, backend: str = "inductor", pdl: bool = False,
                     combo_kernels: bool = False) -> LatencyResult:
    """One decode step of ``model.forward`` under ``torch.compile`` (whole model, ``fullgraph``,
    static KV cache): timed as called (``decode_eager``: a compiled model without CUDA graphs)
    and replayed from a CUDA graph. The packed linears are one operator node each
    (``kernels/op.py``); inductor fuses the rest. The prompt is prefilled uncompiled. ``pdl``:
    compiled and run with inductor's programmatic dependent launch (``pdl_available()``), which
    the packed linears follow. ``combo_kernels``: inductor launches independent small kernels as
    one (its ``combo_kernels`` setting)."""
    import torch._inductor.config as inductor_config

    with inductor_pdl(pdl), inductor_config.patch(combo_kernels=combo_kernels):
        return _measure_compiled(model, variant, batch=batch, prompt_len=prompt_len, reps=reps, graph=graph,
                                 backend=backend)


def _measure_compiled(model: Any, variant: str, *, batch: int, prompt_len: int, reps: int, graph: bool,
                      backend: str) -> LatencyResult:
    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    prompt = random_prompt(model, batch, prompt_len, device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    static, position = prefilled_static_cache(model, prompt)
    step_input = prompt[:, -1:]
    reference = repeatable_step(model, static, step_input, position)().logits

    torch._dynamo.reset()  # every model compiles afresh
    compiled: Any = torch.compile(model.forward, backend=backend, fullgraph=True, dynamic=False)
    step = repeatable_step(compiled, static, step_input, position)

    started = time.perf_counter()
    logits = step().logits
    _sync()
    compile_s = time.perf_counter() - started
    err = float((logits.double() - reference.double()).norm() / reference.double().norm())
    notes = [f"torch.compile ({backend}, fullgraph) took {compile_s:.0f} s; logits differ from the "
             f"uncompiled model's by {err:.1e} (relative; fp16 fusions round differently)"]
    eager = time_eager(step, reps=max(reps, 10), warmup=2) if on_gpu else _cpu_timing(step, reps)
    decode_graph = back_to_back = None
    if graph and on_gpu:
        decode_graph, back_to_back = time_graph_both([step], reps=max(reps, 20))
    peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
    return LatencyResult(variant, batch, None, eager, decode_graph, None, peak, tuple(notes), compile_s,
                         back_to_back)


def crossover(sweep: dict[str, dict[int, float]], slow_at_one: str = "aks_gemm", fast_at_one: str = "aks_gemv") -> int | None:
    """The smallest batch from which ``slow_at_one`` is at least as fast as ``fast_at_one``."""
    a, b = sweep.get(slow_at_one, {}), sweep.get(fast_at_one, {})
    for batch in sorted(set(a) & set(b)):
        if a[batch] <= b[batch]:
            return batch
    return None
