"""load_quantized(): any AutoAWQ checkpoint onto the kernel that select_kernel() picks.

Returns the same kind of object as ``AutoAWQForCausalLM.from_quantized`` (AutoAWQ's model
wrapper, with ``.model``, ``.generate``, ``.quant_config``), so existing code switches by
changing one import. Where this library's kernels are selected, the linears are
:mod:`awq_kernel_select.modules` drop-ins, converted losslessly to the layout the kernel wants.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .detect import detect_compute_capability
from .fuse import fuse_projections
from .modules import LAYOUT_CLASSES, AWQLinear, set_layout, set_path
from .select import VERSIONS, Selection, select_kernel
from .stack import at_least, check_rope_fields, dtype_kwargs, portable_config, require_awq


class CheckpointError(ValueError):
    """A checkpoint this library cannot load; the message names the file and the field."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    version: str
    bits: int
    group_size: int
    zero_point: bool
    modules_to_not_convert: tuple[str, ...]
    model_type: str
    weight_files: tuple[Path, ...]
    #: config fields this transformers needs passed explicitly (RoPE settings a 5.x config holds
    #: only as ``rope_parameters``, which 4.x would silently read as the defaults)
    config_overrides: tuple[tuple[str, Any], ...] = ()


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read and validate ``config.json``'s ``quantization_config`` and find the weight files."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder (this library loads local checkpoints only, no hub downloads)")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} is missing: an AutoAWQ checkpoint has a config.json")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} holds a JSON {type(config).__name__}, not an object with the model's settings")
    check_rope_fields(config, str(config_file))
    portable = portable_config(config)
    overrides = () if at_least(5, 0) else tuple((k, portable[k]) for k in portable if k not in config)
    quant = config.get("quantization_config")
    legacy = root / "quant_config.json"
    if quant is None and legacy.is_file():
        raw = json.loads(legacy.read_text())
        quant = {"bits": raw.get("w_bit"), "group_size": raw.get("q_group_size"), "version": raw.get("version"),
                 "zero_point": raw.get("zero_point"), "modules_to_not_convert": raw.get("modules_to_not_convert")}
    if quant is None:
        raise CheckpointError(f"{config_file} has no 'quantization_config': is this an AWQ checkpoint?")
    where = f"{config_file}: quantization_config"
    if str(quant.get("quant_method", "awq")).lower() != "awq":
        raise CheckpointError(f"{where}.quant_method is {quant.get('quant_method')!r}, not 'awq'")
    bits = quant.get("bits", quant.get("w_bit"))
    if bits != 4:
        raise CheckpointError(f"{where}.bits is {bits!r}: only 4-bit AWQ checkpoints are supported")
    version = str(quant.get("version", "")).lower()
    if version not in VERSIONS:
        raise CheckpointError(f"{where}.version is {quant.get('version')!r}; known versions: {', '.join(VERSIONS)}")
    group = quant.get("group_size", quant.get("q_group_size"))
    if not isinstance(group, int) or (group != -1 and group <= 0):
        raise CheckpointError(f"{where}.group_size is {group!r}: expected a positive integer or -1")
    files = tuple(sorted(root.glob("*.safetensors"))) or tuple(sorted(root.glob("pytorch_model*.bin")))
    if not files:
        raise CheckpointError(f"{root} has no weights: expected model.safetensors (or shards) or pytorch_model.bin")
    return CheckpointInfo(
        path=root, version=version, bits=4, group_size=group,
        zero_point=bool(quant.get("zero_point", True)),
        modules_to_not_convert=tuple(quant.get("modules_to_not_convert") or ()),
        model_type=str(config.get("model_type", "")), weight_files=files, config_overrides=overrides,
    )


def resolve_device(device: str | torch.device | int | None) -> torch.device:
    """``None`` -> ``cuda`` if there is a GPU else ``cpu``; accepts ``"cuda:1"``, ints, devices."""
    if device is None:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use device='cpu'")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported: use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def _select(info: CheckpointInfo, device: torch.device, kernel: str, workload: Any) -> Selection:
    work = workload if workload is not None else "interactive"
    force = None if kernel == "auto" else kernel
    if device.type == "cpu":
        return select_kernel(workload=work, checkpoint_version=info.version, device="cpu",
                             zero_point=info.zero_point, force=force)
    detection = detect_compute_capability(device.index)
    return select_kernel(workload=work, checkpoint_version=info.version, detection=detection,
                         zero_point=info.zero_point, force=force)


def _check_shapes(info: CheckpointInfo, model: torch.nn.Module) -> None:
    """Compare every packed buffer in the safetensors files with what the model expects."""
    from safetensors import safe_open

    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()
              if name.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales")}
    for file in info.weight_files:
        if file.suffix != ".safetensors":
            return  # .bin files are checked by torch's own loading
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    shape = tuple(handle.get_slice(key).get_shape())
                    if shape != wanted[key]:
                        raise CheckpointError(
                            f"{file.name}: {key} has shape {shape}, but a {info.version} layer with "
                            f"group_size={info.group_size} needs {wanted[key]}"
                        )


def load_quantized(
    path: str | os.PathLike[str],
    *,
    kernel: str = "auto",
    workload: Any = None,
    device: str | torch.device | int | None = None,
    layout: str | None = None,
    trust_remote_code: bool = False,
    **from_quantized_kwargs: Any,
) -> Any:
    """Load an AutoAWQ checkpoint onto the selected kernel; a drop-in for ``from_quantized``.

    ``kernel="auto"`` asks :func:`select_kernel` (for ``workload``, default interactive);
    a row name (``"aks_gemv"``, ``"torch_dequant"``, ``"autoawq_gemm"``...) forces that kernel,
    still checked. The returned wrapper carries ``awq_kernel_selection`` (the Selection) and
    ``awq_kernel_layers`` (layer name -> kernel), and each layer module says its kernel.
    ``layout`` ("gemm" or "gemv") holds the weights in that layout whatever the kernel (this
    library's kernels read both), e.g. to run a GEMM checkpoint on GEMV-layout weights.
    ``fuse_layers=True`` (as in ``from_quantized``) fuses each q/k/v and gate/up group into one
    packed linear (:func:`~awq_kernel_select.fuse.fuse_projections`; the wrapper carries
    ``awq_fuse_report``); attention runs the model's own code, and a SwiGLU MLP becomes a
    :class:`~awq_kernel_select.fuse.GatedMLP` (SiLU x up in the gate/up kernel).
    ``trust_remote_code`` (default False, on every path: AutoAWQ's own default is True) lets a
    checkpoint's ``auto_map`` run the Python files it ships.
    """
    if layout not in (None, "gemm", "gemv"):
        raise ValueError(f"layout={layout!r}: use 'gemm', 'gemv' or None (the selected kernel's)")
    info = read_checkpoint(path)
    from_quantized_kwargs["trust_remote_code"] = bool(trust_remote_code)
    dev = resolve_device(device)
    selection = _select(info, dev, kernel, workload)
    if selection.kernel.provider == "autoawq" and info.version == selection.layout:
        if layout is not None and layout != info.version:
            raise ValueError(f"layout={layout!r} needs this library's kernels; {selection.name} reads {info.version}")
        wrapper = _load_with_autoawq(info, dev, selection, from_quantized_kwargs)
    elif selection.kernel.provider == "autoawq":
        # AutoAWQ's loader cannot convert layouts: load with ours, converted, then hand every
        # layer to AutoAWQ's module class for that layout (same buffers).
        if selection.name not in AUTOAWQ_MODULES:
            raise ValueError(f"{selection.name} needs a {selection.layout} checkpoint; this one is {info.version}")
        wrapper = _load_with_ours(info, dev, selection, selection.layout, from_quantized_kwargs)
        hand_to_autoawq(wrapper.model, AUTOAWQ_MODULES[selection.name])
        if from_quantized_kwargs.get("fuse_layers"):
            warnings.warn(f"fuse_layers is ignored with {selection.name}: AutoAWQ's fused modules need awq_ext; "
                          "this library's kernels fuse (kernel='auto' or an aks_* row)", stacklevel=2)
    else:
        wrapper = _load_with_ours(info, dev, selection, layout, from_quantized_kwargs)
        if from_quantized_kwargs.get("fuse_layers"):
            wrapper.awq_fuse_report = fuse_projections(wrapper.model)
    wrapper.awq_kernel_selection = selection
    wrapper.awq_kernel_layers = kernels_in(wrapper.model)
    return wrapper


#: AutoAWQ rows whose module class takes this library's buffers as they are
AUTOAWQ_MODULES = {"autoawq_gemm": "WQLinear_GEMM", "autoawq_triton_gemm": "WQLinear_GEMM",
                   "autoawq_gemv": "WQLinear_GEMV"}


def hand_to_autoawq(model: torch.nn.Module, class_name: str) -> None:
    """Replace every packed layer by AutoAWQ's ``class_name`` module holding the same buffers."""
    require_awq()
    import awq.modules.linear as awq_linear
    from awq.utils.module import set_op_by_name

    cls = getattr(awq_linear, class_name)
    for name, module in list(model.named_modules()):
        if isinstance(module, AWQLinear):
            theirs = cls(module.w_bit, module.group_size, module.in_features, module.out_features,
                         module.bias is not None, module.qweight.device)
            theirs.qweight, theirs.qzeros, theirs.scales = module.qweight, module.qzeros, module.scales
            theirs.bias = module.bias
            set_op_by_name(model, name, theirs)


def kernels_in(model: torch.nn.Module) -> dict[str, str]:
    """Layer name -> the kernel it runs (this library's modules and AutoAWQ's WQLinear_*)."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, AWQLinear):
            out[name] = module.kernel_name if module.path == "auto" else f"{module.kernel_name}:{module.path}"
        elif type(module).__name__.startswith("WQLinear"):
            out[name] = "autoawq_" + type(module).__name__.removeprefix("WQLinear_").lower()
    return out


def _load_with_autoawq(info: CheckpointInfo, device: torch.device, selection: Selection,
                       kwargs: dict[str, Any]) -> Any:
    require_awq()
    from awq import AutoAWQForCausalLM

    flags = {"autoawq_exllama": {"use_exllama": True}, "autoawq_exllama_v2": {"use_exllama_v2": True},
             "autoawq_ipex": {"use_ipex": True}}.get(selection.name, {})
    kwargs = {**flags, **kwargs}
    kwargs.setdefault("device_map", {"": str(device)})  # AutoAWQ rejects device_map="cuda"
    kwargs = {**dict(info.config_overrides), **kwargs}  # AutoAWQ hands these to AutoConfig
    return AutoAWQForCausalLM.from_quantized(str(info.path), **kwargs)


def _load_with_ours(info: CheckpointInfo, device: torch.device, selection: Selection,
                    layout: str | None, kwargs: dict[str, Any]) -> Any:
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    require_awq()
    from awq.models._config import AwqConfig
    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP
    from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears, set_op_by_name
    from transformers import AutoConfig, AutoModelForCausalLM  # type: ignore[attr-defined]

    unsupported = set(kwargs) - {"dtype", "torch_dtype", "trust_remote_code", "max_seq_len", "fuse_layers"}
    if unsupported:
        raise TypeError(f"load_quantized with this library's kernels does not take {sorted(unsupported)}")
    if info.model_type not in AWQ_CAUSAL_LM_MODEL_MAP:
        raise CheckpointError(f"{info.path / 'config.json'}: model_type {info.model_type!r} is not supported by AutoAWQ")
    if info.version not in LAYOUT_CLASSES:
        raise CheckpointError(f"{info.path / 'config.json'}: version {info.version!r} needs AutoAWQ's own kernel")
    awq_cls = AWQ_CAUSAL_LM_MODEL_MAP[info.model_type]
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype", torch.float16))  # 5.x's name, or 4.x's
    trust = bool(kwargs.get("trust_remote_code", False))
    config = AutoConfig.from_pretrained(str(info.path), trust_remote_code=trust, **dict(info.config_overrides))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust, **dtype_kwargs(dtype))
    layer_cls = LAYOUT_CLASSES[info.version]
    for layer in awq_cls.get_model_layers(model):
        named = exclude_layers_to_not_quantize(get_named_linears(layer), list(info.modules_to_not_convert))
        awq_cls._scale_activations(awq_cls, layer)
        for name, linear in named.items():
            set_op_by_name(layer, name, layer_cls.from_linear(linear, info.bits, info.group_size, init_only=True))
    model.tie_weights()
    _check_shapes(info, model)
    try:
        load_checkpoint_and_dispatch(model, checkpoint=str(info.path), device_map={"": str(device)},
                                     no_split_module_classes=[awq_cls.layer_type], dtype=dtype)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{info.path}: the weights do not fit the model: {exc}") from exc
    path = "torch" if selection.name == "torch_dequant" else "auto"
    set_layout(model, layout or (info.version if selection.name == "torch_dequant" else selection.layout))
    set_path(model, path)
    model.eval()
    quant_config = AwqConfig.from_dict({"zero_point": info.zero_point, "q_group_size": info.group_size,
                                        "w_bit": info.bits, "version": info.version,
                                        "modules_to_not_convert": list(info.modules_to_not_convert) or None})
    return awq_cls(model, info.model_type, is_quantized=True, config=config,
                   quant_config=quant_config, processor=None)


