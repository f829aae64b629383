"""The benchmark run: every kernel variant that can run, at batch 1 and across batch sizes."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__
from ..attention import use_decode_attention
from ..fuse import fuse_projections
from ..measured import MeasuredCrossover, save_measurement
from ..modules import set_layout, set_path
from ..probes import check
from ..select import select_kernel
from .latency import (LatencyResult, crossover, eager_decode_step, measure, measure_compiled, pdl_available,
                      time_eager_in_turn)
from .model import EMBEDDED_SHAPES, TINY_SHAPE, dense_twin, embedded_models, packed_bytes_per_token
from .timing import copy_bandwidth


@dataclass(frozen=True)
class RunSizes:
    """How much a run measures: the embedded model's layers, the prompt, the tokens generated,
    the batch sizes of the sweep and the repetitions of each timing."""

    layers: int
    prompt_len: int
    new_tokens: int
    batch_sizes: tuple[int, ...]
    reps: int


#: a GPU times the 7B-shaped model as docs/benchmarks.md reports it; the CPU path (no GPU) is a
#: short run of a tiny model, so that the README's main job finishes in seconds
GPU_SIZES = RunSizes(layers=32, prompt_len=128, new_tokens=32, batch_sizes=(1, 2, 4, 8, 16, 32, 64), reps=10)
CPU_SIZES = RunSizes(layers=2, prompt_len=16, new_tokens=4, batch_sizes=(1, 2, 4), reps=3)


@dataclass
class BenchConfig:
    model: Path | None = None  # a checkpoint; None: the embedded model of ``shape``
    # the embedded model's family (model.EMBEDDED_SHAPES); None: Llama-2-7B shapes on a GPU, a
    # tiny Llama on the CPU
    shape: str | None = None
    # None: the device's default (RunSizes: GPU_SIZES, or CPU_SIZES where no GPU is visible)
    layers: int | None = None  # of the embedded model
    prompt_len: int | None = None
    new_tokens: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    reps: int | None = None
    graph: bool = True
    save_measured: bool = True
    compile: bool | None = None  # also time the decode step under torch.compile; None: on a GPU only
    compile_backend: str = "inductor"
    fuse: bool = True  # also time aks_gemv with q/k/v and gate/up fused, SiLU x up in its kernel (fuse_projections); GPU only
    eager_rounds: int = 10  # eager decode steps: rounds of 5 steps per variant, the variants in turn
    pdl: bool = True  # also compile fp16 and the fused model with inductor's PDL (sm90+; ours follows)
    # inductor's combo kernels for every compiled variant on a GPU: independent small kernels (the
    # rotary embeddings of q and k, the cache writes) launched as one (H100, 7B-shaped step:
    # -1.7% fused 4-bit, -0.4% fp16, measured 2026-11-25)
    combo_kernels: bool = True
    # also compile fp16 and the fused model with PDL and the decode step's attention on this
    # library's split-KV kernel instead of SDPA (use_decode_attention; labels end in "+attn")
    decode_attention: bool = True
    progress: Callable[[str], None] = print


@dataclass
class BenchResult:
    device: str
    gpu: dict[str, Any] | None
    description: str
    on_gpu: bool
    single: list[LatencyResult]
    sweep: dict[str, dict[int, float]]  # variant -> batch -> decode step (us), graph if possible
    sweep_kind: str  # "cuda-graph" or "eager"
    crossover: int | None
    auto_kernel: str
    floor_us: float | None  # bytes per decode step / measured bandwidth
    bandwidth_Bps: float | None
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sweep"] = {k: {str(b): v for b, v in d.items()} for k, d in self.sweep.items()}
        return out


def _versions() -> dict[str, str]:
    import transformers

    out = {"awq_kernel_select": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def _autoawq_gemm_copy(model: nn.Module) -> nn.Module | str:
    """The same weights on AutoAWQ's own WQLinear_GEMM (awq_ext, else its Triton fallback)."""
    import copy

    from ..load import hand_to_autoawq

    try:
        twin = set_layout(copy.deepcopy(model), "gemm")
        hand_to_autoawq(twin, "WQLinear_GEMM")
    except ImportError as exc:
        return f"autoawq not importable: {exc}"
    return twin


def sizes_for(cfg: BenchConfig, on_gpu: bool) -> RunSizes:
    """``cfg``'s sizes, each one it leaves at None taken from the device's defaults."""
    base = GPU_SIZES if on_gpu else CPU_SIZES
    layers = base.layers if not on_gpu or cfg.shape is None else EMBEDDED_SHAPES[cfg.shape].layers
    return RunSizes(layers=layers if cfg.layers is None else cfg.layers,
                    prompt_len=base.prompt_len if cfg.prompt_len is None else cfg.prompt_len,
                    new_tokens=base.new_tokens if cfg.new_tokens is None else cfg.new_tokens,
                    batch_sizes=base.batch_sizes if cfg.batch_sizes is None else cfg.batch_sizes,
                    reps=base.reps if cfg.reps is None else cfg.reps)


def run_benchmark(cfg: BenchConfig) -> BenchResult:
    started = time.time()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    say = cfg.progress
    notes: list[str] = []
    if not on_gpu:
        notes.append("No CUDA GPU here: GPU latency could not be measured. This ran the CPU path "
                     "(plain torch dequantize + matmul), with host timers.")
    if cfg.model is not None and cfg.shape is not None:
        raise ValueError(f"shape={cfg.shape!r} is for the embedded model; model={cfg.model} benches a checkpoint: "
                         "give one of the two")
    if cfg.shape is not None and cfg.shape not in EMBEDDED_SHAPES:
        raise ValueError(f"shape={cfg.shape!r}: one of {', '.join(EMBEDDED_SHAPES)}")
    sizes = sizes_for(cfg, on_gpu)
    variants: dict[str, nn.Module] = {}
    if cfg.model is None:
        tiny = cfg.shape is None and not on_gpu
        shape = cfg.shape or "llama2-7b"
        say(f"building the embedded model ({(TINY_SHAPE if tiny else EMBEDDED_SHAPES[shape]).label}, "
            f"{sizes.layers} layers) ...")
        models = embedded_models(sizes.layers, device, tiny=tiny, shape=shape)
        description = models.description
        variants["fp16"] = models.fp16
        quantized = models.quantized
    else:
        from ..load import load_quantized

        quantized = load_quantized(cfg.model, device=device).model
        description = f"checkpoint {cfg.model}"
        variants["fp16"] = dense_twin(quantized)
        notes.append("fp16: the checkpoint's layers dequantized into plain nn.Linear (the dense baseline)")
    notes.append(f"sizes: prompt {sizes.prompt_len} tokens, {sizes.new_tokens} generated, batch sizes "
                 f"{', '.join(map(str, sizes.batch_sizes))}, {sizes.reps} repetitions")
    selection = select_kernel(workload="interactive", device=None if on_gpu else "cpu", use_measured=False)
    if on_gpu:
        from ..kernels.dispatch import default_plan

        notes.append(f"ours: {default_plan(device).describe()}")
        variants["aks_gemm"] = set_layout(quantized, "gemm")
        import copy

        variants["aks_gemv"] = set_layout(copy.deepcopy(quantized), "gemv")
        if cfg.fuse:
            fused = copy.deepcopy(variants["aks_gemv"])
            fuse_projections(fused)
            variants["aks_gemv_fused"] = fused
        twin = _autoawq_gemm_copy(quantized)
        if isinstance(twin, str):
            notes.append(f"autoawq_gemm not measured: {twin}")
        else:
            variants["autoawq_gemm"] = twin
        awq_ext = check("awq_ext", selection.target)
        if not awq_ext:
            notes.append(f"autoawq_gemv not measured: {awq_ext.reason}")
    else:
        set_path(quantized, "torch")
        variants["torch_dequant"] = quantized
    auto_kernel = selection.name

    single: list[LatencyResult] = []
    prompt_len = sizes.prompt_len
    for name, model in variants.items():
        say(f"batch 1: {name} ...")
        result = measure(model, name, prompt_len=prompt_len, new_tokens=sizes.new_tokens,
                         reps=sizes.reps, graph=cfg.graph, eager=False)
        single.append(result)
        notes += [f"{name}: {n}" for n in result.notes]
    rounds, reps = (cfg.eager_rounds, 5) if on_gpu else (3, 3)
    say(f"batch 1: eager decode steps of {len(variants)} variants in turn ({rounds} rounds of {reps}) ...")
    eager = time_eager_in_turn({name: eager_decode_step(model, prompt_len=prompt_len) for name, model in variants.items()},
                               on_gpu=on_gpu, rounds=rounds, reps=reps)
    single = [replace(r, decode_eager=eager[r.variant]) for r in single]
    notes.append(f"decode eager: the variants' eager steps were timed in turn, {rounds} rounds of {reps} steps "
                 "each (host-bound: the host's speed drifts, and in turn every variant sees the same drift)")

    sweep: dict[str, dict[int, float]] = {}
    kind = "cuda-graph" if on_gpu and cfg.graph else "eager"
    batches = sizes.batch_sizes
    for name in [v for v in variants if v != "autoawq_gemm"]:
        sweep[name] = {}
        for batch in batches:
            say(f"sweep: {name} batch {batch} ...")
            r = measure(variants[name], name, batch=batch, prompt_len=prompt_len,
                        reps=sizes.reps, graph=cfg.graph, full=False)
            timing = r.decode_graph if kind == "cuda-graph" and r.decode_graph else r.decode_eager
            if timing is not None:
                sweep[name][batch] = timing.median_us
    cross = crossover(sweep) if on_gpu else None

    if cfg.compile if cfg.compile is not None else on_gpu:
        runs = [(v, False, False) for v in ("fp16", "aks_gemv", "aks_gemv_fused", "torch_dequant") if v in variants]
        if cfg.pdl and on_gpu and cfg.compile_backend == "inductor" and pdl_available():
            runs += [(v, True, False) for v in ("fp16", "aks_gemv_fused") if v in variants]
            if cfg.decode_attention:
                runs += [(v, True, True) for v in ("fp16", "aks_gemv_fused") if v in variants]
                notes.append("+attn variants: the decode step's attention runs this library's split-KV kernel "
                             "(use_decode_attention) instead of SDPA (cuDNN); --no-decode-attention skips them")
        if cfg.combo_kernels and on_gpu:
            notes.append("+compile variants: inductor's combo kernels on (independent small kernels launched as one; "
                         "--no-combo-kernels turns them off)")
        for name, pdl, attn in runs:
            label = f"{name}+compile{'+pdl' if pdl else ''}{'+attn' if attn else ''}"
            say(f"torch.compile: {label} (whole model, fullgraph; ~30 s) ...")
            if attn:
                use_decode_attention(variants[name])
            try:
                result = measure_compiled(variants[name], label, prompt_len=prompt_len,
                                          reps=sizes.reps, graph=cfg.graph,
                                          backend=cfg.compile_backend, pdl=pdl,
                                          combo_kernels=cfg.combo_kernels and on_gpu)
            finally:
                use_decode_attention(variants[name], enabled=False)
            single.append(result)
            notes += [f"{result.variant}: {n}" for n in result.notes]
    elif cfg.compile is None:
        notes.append("torch.compile variants not run on the CPU (`--compile` runs them)")

    gpu = None
    bandwidth = floor = None
    if on_gpu:
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "capability": [props.major, props.minor],
               "memory_GiB": round(props.total_memory / 2**30, 1)}
        bandwidth = copy_bandwidth()
        floor = packed_bytes_per_token(variants["aks_gemm"]) / bandwidth * 1e6
        if cross is not None and cfg.save_measured:
            from ..detect import _nvml_driver_version

            entry = MeasuredCrossover(props.name, (props.major, props.minor), cross,
                                      time.strftime("%Y-%m-%d", time.gmtime()), _nvml_driver_version(), _versions())
            path = save_measurement(props.name, (props.major, props.minor), crossover=entry,
                                    multiprocessors=props.multi_processor_count)
            notes.append(f"measured crossover saved to {path}; select_kernel uses it on this GPU")
    return BenchResult(str(device), gpu, description, on_gpu, single, sweep, kind, cross, auto_kernel, floor,
                       bandwidth, _versions(), notes, time.time() - started)
