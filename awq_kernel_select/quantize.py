"""quantize(): AutoAWQ's quantizer, wrapped to work offline, validate first and write atomically.

What it fixes around AutoAWQ 0.2.9 (shared/PEERS.md):

* no hub download: calibration comes from the user or the shipped presets;
* calibration samples longer than ``max_calib_seq_len`` are split, not silently dropped (which
  ended in ``torch.cat(): expected a non-empty list``); too little text fails up front;
* a group size that does not divide a layer's width fails before any work, naming the layer;
* on the CPU, AWQ's scale search restored weights from a "snapshot" that ``.cpu()`` did not copy,
  so every search step compounded the scales (perplexity 14.8 -> 227,753 on SmolLM2): the
  :class:`CpuSafeAwqQuantizer` makes the snapshot a real copy;
* the checkpoint is written to a temporary folder and renamed into place: a crash leaves none.

``method="rtn"`` packs round-to-nearest weights into the same AutoAWQ layouts, without
calibration: fast, and the baseline AWQ must beat.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .atomic import check_output, write_atomically
from .resume import digest, prepare, resumable_quantizer, resume_folder
from .calibration import CalibrationSet, prepare_calibration
from .memory import check_memory, plan_memory
from .layouts import calculate_zeros_width, pack, quantize_rtn
from .modules import LAYOUT_CLASSES
from .stack import dtype_kwargs, portable_config, require_awq


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeReport:
    path: Path
    version: str
    method: str
    w_bit: int
    group_size: int
    zero_point: bool
    layers: int  # transformer blocks
    linears: int  # quantized linear layers
    calibration_source: str | None
    calibration_samples_used: int
    calibration_tokens_used: int
    calibration_tokens_unused: int
    wall_time_s: float
    seconds_per_layer: float
    device: str
    notes: tuple[str, ...] = field(default=())


class QuantizeError(ValueError):
    """Input that quantize() refuses before doing any work; the message says what to change."""


def _cpu_safe_quantizer_cls() -> type:
    require_awq()
    from awq.quantize.quantizer import AwqQuantizer

    class CpuSafeAwqQuantizer(AwqQuantizer):  # type: ignore[misc]
        """AutoAWQ's quantizer whose scale search snapshots the weights with a real copy.

        ``_compute_best_scale`` keeps ``{k: v.cpu()}`` of the block's state dict to restore
        after each of its 20 trial scalings; on the CPU ``.cpu()`` returns the same tensors,
        which the trial then scales in place. Cloning the state dict it reads fixes that
        without copying AutoAWQ's code.
        """

        def _compute_best_scale(self, x: Any, w_mean: Any, x_mean: Any, module2inspect: nn.Module,
                                linears2scale: Any, fp16_output: Any, kwargs: Any = {}) -> Any:
            original = module2inspect.state_dict

            def cloned_state_dict(*args: Any, **kw: Any) -> dict[str, torch.Tensor]:
                return {k: v.detach().clone() for k, v in original(*args, **kw).items()}

            module2inspect.state_dict = cloned_state_dict  # type: ignore[method-assign, assignment]
            try:
                return super()._compute_best_scale(x, w_mean, x_mean, module2inspect, linears2scale,
                                                   fp16_output, kwargs)
            finally:
                del module2inspect.state_dict  # back to the class's method

    return CpuSafeAwqQuantizer


def _awq_wrapper(model: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    """(AutoAWQ wrapper, tokenizer source path or None) for a path or a loaded HF model."""
    require_awq()
    from awq.models._config import AwqConfig
    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP

    if isinstance(model, (str, os.PathLike)):
        root = Path(model)
        if not (root / "config.json").is_file():
            raise QuantizeError(f"{root} is not a model folder with a config.json (no hub downloads here)")
        from awq import AutoAWQForCausalLM

        # fp16 arithmetic on a CPU is emulated and ~10x slower: search in float32 there (the
        # packed result is fp16 either way: AutoAWQ quantizes each layer after .half())
        dtype = torch.float16 if torch.cuda.is_available() else torch.float32
        return AutoAWQForCausalLM.from_pretrained(str(root), trust_remote_code=trust_remote_code,
                                                  low_cpu_mem_usage=True, use_cache=False,
                                                  **dtype_kwargs(dtype)), root
    if type(model).__name__ in {c.__name__ for c in AWQ_CAUSAL_LM_MODEL_MAP.values()}:
        return model, None
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in AWQ_CAUSAL_LM_MODEL_MAP:
        raise QuantizeError(
            f"model_type {model_type!r} is not supported by AutoAWQ 0.2.9; supported: "
            f"{', '.join(sorted(AWQ_CAUSAL_LM_MODEL_MAP))}"
        )
    wrapper = AWQ_CAUSAL_LM_MODEL_MAP[model_type](model, model_type, is_quantized=False, config=config,
                                                  quant_config=AwqConfig(), processor=None)
    return wrapper, None


def _quantized_linears(wrapper: Any, modules_to_not_convert: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears

    out = []
    for i, layer in enumerate(wrapper.get_model_layers(wrapper.model)):
        named = exclude_layers_to_not_quantize(get_named_linears(layer), list(modules_to_not_convert))
        out += [(f"layers.{i}.{name}", linear) for name, linear in named.items()]
    return out


def group_sizes_that_fit(linears: Sequence[tuple[str, nn.Linear]]) -> list[int]:
    """The usual group sizes that divide every quantized layer's input width."""
    widths = {lin.in_features for _, lin in linears}
    return [c for c in (32, 64, 128, 256) if all(w % c == 0 for w in widths)]


def check_group_size(linears: Sequence[tuple[str, nn.Linear]], group_size: int, version: str) -> None:
    """Every quantized layer's input width must be a multiple of the group size (and of 8),
    its output width a multiple of 32 (AutoAWQ's packers assume it); name the first that fails."""
    if group_size != -1 and group_size not in (32, 64, 128) and version == "gemv":
        raise QuantizeError(f"the GEMV layout supports group sizes 32, 64 and >= 128, not {group_size}")
    for name, linear in linears:
        k, n = linear.in_features, linear.out_features
        g = k if group_size == -1 else group_size
        if k % g or k % 8:
            raise QuantizeError(
                f"group_size={group_size} does not divide {name}.in_features={k}; group sizes that divide "
                f"every layer: {group_sizes_that_fit(linears) or 'none of 32/64/128/256'} (or -1 for one group per row)"
            )
        if n % 32:
            raise QuantizeError(f"{name}.out_features={n} is not a multiple of 32, which AutoAWQ's packing needs")
        if version == "gemv":
            calculate_zeros_width(k, g)


def check_clip_shapes(linears: Sequence[tuple[str, nn.Linear]]) -> None:
    """AutoAWQ's clipping search batches output channels by 64 (it asserts; quantizer.py)."""
    skipped = ("q_", "k_", "query", "key", "Wqkv")  # AutoAWQ does not clip these
    for name, linear in linears:
        if not any(s in name for s in skipped) and linear.out_features % 64:
            raise QuantizeError(
                f"{name}.out_features={linear.out_features} is not a multiple of 64, which AutoAWQ's "
                f"clipping search needs: pass apply_clip=False"
            )


def _file_stamps(folder: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of a model folder's files: a changed model is not resumed."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())


def _write_portable_config(path: Path) -> None:
    """Rewrite ``config.json`` with the RoPE fields every supported transformers reads (5.x
    writes them only as ``rope_parameters``, which 4.x ignores): see :func:`stack.portable_config`."""
    config = json.loads(path.read_text())
    portable = portable_config(config)
    if portable != config:
        path.write_text(json.dumps(portable, indent=2, sort_keys=True) + "\n")


def _rtn_quantize(wrapper: Any, w_bit: int, group_size: int, zero_point: bool, version: str,
                  modules_to_not_convert: Sequence[str]) -> int:
    """Replace every quantized linear by a packed round-to-nearest module, layer by layer."""
    from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears, set_op_by_name
    from tqdm import tqdm

    count = 0
    for layer in tqdm(wrapper.get_model_layers(wrapper.model), desc="RTN"):
        named = exclude_layers_to_not_quantize(get_named_linears(layer), list(modules_to_not_convert))
        for name, linear in named.items():
            g = linear.in_features if group_size == -1 else group_size
            q, z, s = quantize_rtn(linear.weight.data, g, zero_point)
            module = LAYOUT_CLASSES[version].from_packed(pack(q, z, s, g, version), linear.bias)
            set_op_by_name(layer, name, module)
            count += 1
    return count


def quantize(
    model: Any,
    output_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    calibration: Sequence[str] | Sequence[Sequence[int]] | str | os.PathLike[str] | None = None,
    preset: str = "prose",
    w_bit: int = 4,
    group_size: int = 128,
    zero_point: bool = True,
    version: str = "gemm",
    method: str = "awq",
    workload: Any = "interactive",
    max_calib_samples: int = 128,
    max_calib_seq_len: int = 512,
    apply_clip: bool = True,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    resume: bool = True,
    max_memory: dict[int | str, int | str] | None = None,
    **quantize_kwargs: Any,
) -> QuantizeReport:
    """Quantize ``model`` (a folder or a loaded model) to 4 bits and save an AutoAWQ checkpoint.

    ``version`` is "gemm", "gemv" or "auto" (what :func:`select_kernel` picks for ``workload``
    on this machine). ``method`` is "awq" (AutoAWQ's scale search) or "rtn" (round to
    nearest). Everything that can be checked is checked before calibration starts. With
    ``method="awq"`` on a model folder, each finished decoder block is kept beside the output
    (``resume.py``): a killed run started again with the same settings (``resume=True``)
    continues at the next block. Before calibration a memory plan (``memory.py``: peak per
    device, from the model's blocks and the calibration size) is logged, and a quantization that
    cannot fit a device's free memory or its ``max_memory`` cap ("cpu", GPU index: bytes or
    "20GiB") is refused with :class:`~awq_kernel_select.memory.MemoryPlanError`.
    """
    started = time.perf_counter()
    if w_bit != 4:
        raise QuantizeError(f"w_bit={w_bit}: only 4-bit AWQ is supported")
    if method not in ("awq", "rtn"):
        raise QuantizeError(f"method={method!r}: use 'awq' or 'rtn'")
    if method == "awq" and not zero_point:
        raise QuantizeError("zero_point=False with method='awq' needs the Marlin layout, which this library "
                            "does not write; use zero_point=True, or method='rtn'")
    if group_size != -1 and (group_size < 8 or group_size % 8):
        raise QuantizeError(f"group_size={group_size}: use -1 or a multiple of 8 (32, 64, 128 are usual)")
    notes: list[str] = []
    if version == "auto":
        from .select import select_kernel

        chosen = select_kernel(workload=workload)
        version = chosen.layout if chosen.layout in ("gemm", "gemv") else "gemm"
        notes.append(f"version=auto chose {version}: {chosen.reasons[0]}")
    if version not in ("gemm", "gemv"):
        raise QuantizeError(f"version={version!r}: this library writes 'gemm' or 'gemv' checkpoints (or 'auto')")

    output = Path(output_dir)
    check_output(output, overwrite, QuantizeError)  # before any model work
    wrapper, source_dir = _awq_wrapper(model, trust_remote_code)
    modules_to_not_convert = list(getattr(wrapper, "modules_to_not_convert", None) or [])
    linears = _quantized_linears(wrapper, modules_to_not_convert)
    if not linears:
        raise QuantizeError("the model has no linear layers to quantize")
    check_group_size(linears, group_size, version)
    if method == "awq" and group_size == -1:
        raise QuantizeError(f"group_size=-1 (one group per row) with method='awq': AutoAWQ 0.2.9's scale search "
                            f"cannot run it; group sizes that divide every layer here: "
                            f"{group_sizes_that_fit(linears) or 'none of 32-256'}, or method='rtn', which takes -1")
    if method == "awq" and apply_clip:
        check_clip_shapes(linears)
    if tokenizer is None and source_dir is not None and method == "awq":
        from transformers import AutoTokenizer  # type: ignore[attr-defined]

        tokenizer = AutoTokenizer.from_pretrained(str(source_dir))
    if method == "awq":
        decoder_blocks = list(wrapper.get_model_layers(wrapper.model))
        memory = plan_memory(wrapper.model, decoder_blocks, wrapper.model.config, max_calib_samples, max_calib_seq_len,
                             max_memory)
        log.info("%s", memory.format())
        check_memory(memory)
    calib: CalibrationSet | None = None
    if method == "awq":
        calib = prepare_calibration(calibration if not isinstance(calibration, os.PathLike) else Path(calibration), tokenizer, max_samples=max_calib_samples,
                                    seq_len=max_calib_seq_len, preset=preset)

    device = str(next(wrapper.model.parameters()).device)
    quant_config = {"zero_point": zero_point, "q_group_size": group_size, "w_bit": w_bit, "version": version.upper()}
    folder = resume_folder(output)
    if method == "awq":
        assert calib is not None
        quantizer_cls = _cpu_safe_quantizer_cls()
        if source_dir is not None:  # a folder has an identity to resume against; a model in memory not
            settings = {"model": str(Path(source_dir).resolve()), "files": _file_stamps(Path(source_dir)),
                        "quant": quant_config, "apply_clip": apply_clip, "seq_len": max_calib_seq_len,
                        "kwargs": quantize_kwargs}
            key = digest(settings, list(calib.blocks))
            done = prepare(folder, key, reuse=resume)
            quantizer_cls = resumable_quantizer(quantizer_cls, folder, key, done)
        wrapper.quantize(tokenizer, quant_config, calib_data=calib.blocks, max_calib_samples=len(calib.blocks),
                         max_calib_seq_len=max_calib_seq_len, apply_clip=apply_clip,
                         quantizer_cls=quantizer_cls, **quantize_kwargs)
    else:
        from awq.models._config import AwqConfig

        _rtn_quantize(wrapper, w_bit, group_size, zero_point, version, modules_to_not_convert)
        wrapper.quant_config = AwqConfig.from_dict(quant_config)
        wrapper.is_quantized = True

    def write(folder: Path) -> None:
        wrapper.model.half()  # float32 after a CPU search: checkpoints hold fp16, as AutoAWQ writes them
        wrapper.save_quantized(str(folder))
        _write_portable_config(folder / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    write_atomically(output, overwrite, write, QuantizeError)
    shutil.rmtree(folder, ignore_errors=True)  # the saved blocks are in the checkpoint now
    blocks = len(wrapper.get_model_layers(wrapper.model))
    wall = time.perf_counter() - started
    return QuantizeReport(
        path=output, version=version, method=method, w_bit=w_bit, group_size=group_size, zero_point=zero_point,
        layers=blocks, linears=len(linears),
        calibration_source=calib.source if calib else None,
        calibration_samples_used=calib.samples_used if calib else 0,
        calibration_tokens_used=calib.tokens_used if calib else 0,
        calibration_tokens_unused=calib.tokens_unused if calib else 0,
        wall_time_s=wall, seconds_per_layer=wall / max(blocks, 1), device=device, notes=tuple(notes),
    )
