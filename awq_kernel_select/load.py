"""load_quantized(): any AutoAWQ checkpoint onto the kernel that select_kernel() picks.

Returns the same kind of object as ``AutoAWQForCausalLM.from_quantized`` (AutoAWQ's model
wrapper, with ``.model``, ``.generate``, ``.quant_config``), so existing code switches by
changing one import. Where this library's kernels are selected, the linears are
:mod:`awq_kernel_select.modules` drop-ins, converted losslessly to the layout the kernel wants.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, CheckpointInfo, read_checkpoint
from .compressed import QUANT_METHOD
from .devices import apply_plan, plan_devices
from .detect import detect_compute_capability
from .modules import AWQLinear
from .runners import LoadRequest, hand_to_autoawq, load_with_our_modules
from .select import Selection, select_kernel
from .verify import verify_layers

__all__ = ["CheckpointError", "CheckpointInfo", "hand_to_autoawq", "kernels_in", "load_quantized", "read_checkpoint",
           "resolve_device"]


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


def load_quantized(
    path: str | os.PathLike[str],
    *,
    kernel: str = "auto",
    workload: Any = None,
    device: str | torch.device | int | None = None,
    layout: str | None = None,
    trust_remote_code: bool = False,
    verify: bool = True,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    **from_quantized_kwargs: Any,
) -> Any:
    """Load an AutoAWQ checkpoint onto the selected kernel; a drop-in for ``from_quantized``.

    A compressed-tensors W4A16 checkpoint (llm-compressor's; ``compressed.py``) loads too: it is
    converted losslessly to AutoAWQ's GEMM layout in a temporary folder first.

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
    checkpoint's ``auto_map`` run the Python files it ships. ``verify`` (default on: it costs
    15-30 ms on a GPU, as the layers are checked once per distinct shape, ``docs/quantize-load.md``)
    runs each distinct layer of this library's on random input against a float64 reference before returning
    (:func:`~awq_kernel_select.verify.verify_layers`; the wrapper carries the checks as
    ``awq_verify``) and raises :class:`~awq_kernel_select.verify.VerifyError` naming the layer and
    kernel that is wrong. ``device_map`` ("auto", "balanced" or accelerate's dict of module prefix
    -> GPU index, "cpu" or "disk") spreads the model over several devices within ``max_memory``,
    whole decoder layers each, and selects each device's kernel for it (``devices.py``; the wrapper
    carries ``awq_device_plan`` and ``awq_layer_devices``).
    """
    if layout not in (None, "gemm", "gemv"):
        raise ValueError(f"layout={layout!r}: use 'gemm', 'gemv' or None (the selected kernel's)")
    info = read_checkpoint(path)
    if device_map is not None and info.format != QUANT_METHOD:
        return _load_spread(info, device_map, max_memory, kernel, workload, device, layout, trust_remote_code,
                            verify, from_quantized_kwargs)
    if info.format == QUANT_METHOD:  # converted losslessly to AutoAWQ's GEMM layout, then loaded as one
        from .export import export

        with tempfile.TemporaryDirectory(prefix="aks-compressed-") as tmp:
            export(path, Path(tmp) / "gemm", format="autoawq-gemm", progress=False)
            wrapper = load_quantized(Path(tmp) / "gemm", kernel=kernel, workload=workload, device=device,
                                     layout=layout, trust_remote_code=trust_remote_code, verify=verify,
                                     device_map=device_map, max_memory=max_memory, **from_quantized_kwargs)
        wrapper.awq_source_format = QUANT_METHOD
        return wrapper
    dev = resolve_device(device)
    selection = _select(info, dev, kernel, workload)
    runner = selection.kernel.runner
    if runner is None:  # rows are refused at registration without one; a hand-built table may lack it
        raise ValueError(f"the selected kernel {selection.name!r} has no runner: see awq_kernel_select.runners")
    options = {**from_quantized_kwargs, "trust_remote_code": bool(trust_remote_code)}
    wrapper = runner(LoadRequest(info, dev, selection, layout, options))
    wrapper.awq_kernel_selection = selection
    wrapper.awq_kernel_layers = kernels_in(wrapper.model)
    if verify:
        wrapper.awq_verify = verify_layers(wrapper.model)
    return wrapper


def _load_spread(info: CheckpointInfo, device_map: str | dict[str, int | str], max_memory: Any, kernel: str,
                 workload: Any, device: Any, layout: str | None, trust_remote_code: bool, verify: bool,
                 options: dict[str, Any]) -> Any:
    """A model over several devices: accelerate places whole decoder layers (``device_map``), then
    each layer gets the kernel selected for its own device (``devices.py``)."""
    if device is not None:
        raise ValueError("give device or device_map, not both")
    if kernel != "auto" or layout is not None or options.get("fuse_layers"):
        raise ValueError("with device_map, each device's kernel is selected for it: kernel, layout and "
                         "fuse_layers cannot be given")
    offload = tempfile.mkdtemp(prefix="aks-offload-")  # for layers accelerate puts on "disk"
    wrapper = load_with_our_modules(info, None, {**options, "trust_remote_code": bool(trust_remote_code)},
                                    device_map=device_map, max_memory=max_memory, offload_folder=offload)
    placed = dict(getattr(wrapper.model, "hf_device_map", {}) or {"": device_map})
    names = [n for n, m in wrapper.model.named_modules() if isinstance(m, AWQLinear)]
    plan = plan_devices(placed, names, workload=workload or "interactive", checkpoint_version=info.version,
                        zero_point=info.zero_point)
    apply_plan(wrapper.model, plan)
    wrapper.awq_device_plan = plan
    wrapper.awq_kernel_layers = {name: kernel_name for name, (_, kernel_name) in plan.layers.items()}
    wrapper.awq_layer_devices = {name: dev for name, (dev, _) in plan.layers.items()}
    wrapper.awq_offload_folder = offload
    if verify:
        wrapper.awq_verify = verify_layers(wrapper.model)
    return wrapper


def kernels_in(model: torch.nn.Module) -> dict[str, str]:
    """Layer name -> the kernel it runs (this library's modules and AutoAWQ's WQLinear_*)."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, AWQLinear):
            out[name] = module.kernel_name if module.path == "auto" else f"{module.kernel_name}:{module.path}"
        elif type(module).__name__.startswith("WQLinear"):
            out[name] = "autoawq_" + type(module).__name__.removeprefix("WQLinear_").lower()
    return out
