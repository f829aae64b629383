"""What runs for a policy row: each row carries a runner, which turns a checkpoint into a loaded
model on that row's kernel (as torchao binds a quantization config to its handler).

:func:`~awq_kernel_select.load.load_quantized` reads and validates the checkpoint, asks
:func:`~awq_kernel_select.select_kernel` for a row, and calls ``row.runner(request)``; it knows no
row by name. Two runners cover the shipped rows:

* :class:`OursRunner`: this library's modules (``modules.py``), the weights held in the row's
  layout (converted losslessly if the checkpoint has the other), the path chosen per call or
  fixed (``path="torch"``: dequantize + matmul, the CPU path);
* :class:`AutoAWQRunner`: AutoAWQ's own loader and modules, with its flags; a checkpoint of the
  other layout is loaded by ours, converted, and handed to AutoAWQ's module class for the row's
  layout where AutoAWQ has one.

A row of your own takes one of these or any callable with the :class:`Runner` signature
(``examples/custom_policy_row.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch

from .checkpoint import CheckpointError, CheckpointInfo
from .fuse import fuse_projections
from .modules import LAYOUT_CLASSES, AWQLinear, set_layout, set_path, set_plan
from .stack import dtype_kwargs, require_awq

if TYPE_CHECKING:
    from .select import Selection


@dataclass(frozen=True)
class LoadRequest:
    """Everything a runner needs: the checkpoint, the device, the selection that chose the row,
    the layout the caller asked to hold the weights in (None: the row's), and the remaining
    ``from_quantized``-style options (``trust_remote_code`` always among them)."""

    checkpoint: CheckpointInfo
    device: torch.device
    selection: Selection
    layout: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    def __call__(self, request: LoadRequest) -> Any:
        """Load ``request.checkpoint``: AutoAWQ's model wrapper (``.model``, ``.generate``)."""
        ...


@dataclass(frozen=True)
class OursRunner:
    """This library's modules. ``path``: "auto" (the dispatch picks a kernel per call) or
    "torch" (dequantize + matmul, any device); ``layout``: the layout to hold the weights in
    (None: the row's own; "checkpoint": whatever the checkpoint has)."""

    path: str = "auto"
    layout: str | None = None

    def __call__(self, request: LoadRequest) -> Any:
        info = request.checkpoint
        row_layout = info.version if self.layout == "checkpoint" else (self.layout or request.selection.layout)
        wrapper = load_with_our_modules(info, request.device, dict(request.options))
        set_layout(wrapper.model, request.layout or row_layout)
        set_path(wrapper.model, self.path)
        set_plan(wrapper.model, request.selection.plan)
        if request.options.get("fuse_layers"):
            wrapper.awq_fuse_report = fuse_projections(wrapper.model)
        return wrapper


@dataclass(frozen=True)
class AutoAWQRunner:
    """AutoAWQ's loader (``from_quantized`` with ``flags``), or, for a checkpoint of another
    layout, ours converted and handed to AutoAWQ's ``module_class`` (None: AutoAWQ has no module
    that reads this library's buffers for the row's layout, so the row needs its own layout)."""

    flags: tuple[tuple[str, Any], ...] = ()
    module_class: str | None = None

    def __call__(self, request: LoadRequest) -> Any:
        info, row = request.checkpoint, request.selection.kernel
        if request.layout is not None and request.layout != row.layout:
            raise ValueError(f"layout={request.layout!r} needs this library's kernels; {row.name} reads {row.layout}")
        if info.version == row.layout:
            return self._from_quantized(request)
        if self.module_class is None:
            raise ValueError(f"{row.name} needs a {row.layout} checkpoint; this one is {info.version}")
        options = dict(request.options)
        if options.pop("fuse_layers", False):
            warnings.warn(f"fuse_layers is ignored with {row.name}: AutoAWQ's fused modules need awq_ext; this "
                          "library's kernels fuse (kernel='auto' or an aks_* row)", stacklevel=4)
        wrapper = load_with_our_modules(info, request.device, options)
        set_layout(wrapper.model, row.layout)
        hand_to_autoawq(wrapper.model, self.module_class)
        return wrapper

    def _from_quantized(self, request: LoadRequest) -> Any:
        require_awq()
        from awq import AutoAWQForCausalLM

        kwargs = {**dict(self.flags), **dict(request.options)}
        kwargs.setdefault("device_map", {"": str(request.device)})  # AutoAWQ rejects device_map="cuda"
        kwargs = {**dict(request.checkpoint.config_overrides), **kwargs}  # AutoAWQ hands these to AutoConfig
        return AutoAWQForCausalLM.from_quantized(str(request.checkpoint.path), **kwargs)


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


#: the dtypes AutoAWQ writes for each packed buffer
PACKED_DTYPES = {"qweight": ("I32",), "qzeros": ("I32",), "scales": ("F16", "BF16")}


def _check_tensors(info: CheckpointInfo, model: torch.nn.Module) -> None:
    """Every packed buffer the model expects is in the safetensors files, with its shape and
    dtype; a file that cannot be read is named. (.bin files are checked by torch's own loading.)"""
    from safetensors import safe_open

    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()
              if name.rsplit(".", 1)[-1] in PACKED_DTYPES}
    if any(file.suffix != ".safetensors" for file in info.weight_files):
        return
    found: set[str] = set()
    for file in info.weight_files:
        try:
            handle_cm = safe_open(str(file), framework="pt")
            with handle_cm as handle:
                for key in handle.keys():
                    if key not in wanted:
                        continue
                    found.add(key)
                    piece = handle.get_slice(key)
                    shape, dtype = tuple(piece.get_shape()), str(piece.get_dtype())
                    if shape != wanted[key]:
                        raise CheckpointError(f"{file}: {key} has shape {shape}, but a {info.version} layer with "
                                              f"group_size={info.group_size} needs {wanted[key]}")
                    if dtype not in PACKED_DTYPES[key.rsplit(".", 1)[-1]]:
                        raise CheckpointError(f"{file}: {key} is {dtype}; AutoAWQ checkpoints hold "
                                              f"{' or '.join(PACKED_DTYPES[key.rsplit('.', 1)[-1]])} there")
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise CheckpointError(f"{file} cannot be read as safetensors ({exc}): the file may be truncated or "
                                  "damaged; copy or save it again") from exc
    missing = sorted(set(wanted) - found)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{info.path}: {', '.join(missing[:3])}{more} missing from "
                              f"{', '.join(f.name for f in info.weight_files)}")


def load_with_our_modules(info: CheckpointInfo, device: torch.device | None, kwargs: dict[str, Any],
                          device_map: Any = None, max_memory: Any = None, offload_folder: str | None = None) -> Any:
    """The checkpoint in AutoAWQ's model wrapper, every quantized linear one of this library's
    modules in the checkpoint's layout, the weights read straight onto ``device`` (or spread by
    accelerate over ``device_map``: "auto", "balanced" or a dict, within ``max_memory``; a decoder
    layer is never split, so fused projections stay on one device)."""
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
            if info.group_size > linear.in_features:
                raise CheckpointError(f"{info.path / 'config.json'}: quantization_config.group_size={info.group_size} "
                                      f"is larger than {name}.in_features={linear.in_features}: the config does not "
                                      "belong to these weights")
            set_op_by_name(layer, name, layer_cls.from_linear(linear, info.bits, info.group_size, init_only=True))
    model.tie_weights()
    _check_tensors(info, model)
    try:
        load_checkpoint_and_dispatch(model, checkpoint=str(info.path),
                                     device_map={"": str(device)} if device_map is None else device_map,
                                     max_memory=max_memory, offload_folder=offload_folder,
                                     no_split_module_classes=[awq_cls.layer_type], dtype=dtype)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{info.path}: the weights do not fit the model: {exc}") from exc
    model.eval()
    quant_config = AwqConfig.from_dict({"zero_point": info.zero_point, "q_group_size": info.group_size,
                                        "w_bit": info.bits, "version": info.version,
                                        "modules_to_not_convert": list(info.modules_to_not_convert) or None})
    return awq_cls(model, info.model_type, is_quantized=True, config=config,
                   quant_config=quant_config, processor=None)
