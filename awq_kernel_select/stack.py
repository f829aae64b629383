"""The transformers versions this library runs on, and the few places their APIs differ.

Every call into transformers or AutoAWQ whose form changed between the versions in
:data:`TRANSFORMERS_RANGE` goes through this module, so the rest of the package reads as if there
were one transformers. What differs (docs/compatibility.md has the table and the command that
re-makes it):

* ``import awq``: AutoAWQ 0.2.9 imports ``transformers.models.qwen3`` (added in 4.51.0) and
  ``transformers.activations.PytorchGELUTanh`` (removed in 4.57.0, an alias again from 5.0
  "for compatibility with autoawq"). :func:`require_awq` refuses versions before 4.51 by name
  and gives 4.57.x the same alias 5.x has.
* Attention masks: from 4.53 transformers builds masks through ``ALL_MASK_ATTENTION_FUNCTIONS``
  and hands an attention function registered only in ``AttentionInterface`` no mask at all
  (``attention_mask=None``): a static cache's empty slots were then attended to, silently.
  :func:`register_attention` registers the function and SDPA's mask builder together.
* ``DynamicCache.crop(n)``: a positive ``n`` meant "keep n tokens" up to 5.14 and raises from
  5.15; a negative ``n`` (remove ``-n`` tokens) means the same everywhere: :func:`crop_cache`.
* A static cache writes where ``cache_position`` says up to 4.57; from 5.0 it counts its tokens
  on the device and writes after them: a decode step repeated for timing ran off the cache's end
  (a device-side assert on the GPU). :func:`static_cache_rewinder` undoes a step's advance.
* Rotary embeddings take ``(config, device=None)`` up to 5.18 and ``(config)`` from 5.19:
  :func:`rotary_embedding` builds one on a device either way.
* ``from_pretrained(torch_dtype=)`` became ``dtype=`` in 4.56 (the old name warns in 5.x):
  :func:`dtype_kwargs`.
* ``config.json``: 5.x writes RoPE settings only as ``rope_parameters``, which 4.x ignores
  (it then runs ``rope_theta=10000`` and no scaling, silently wrong for Llama-3-style models).
  :func:`portable_config` adds the ``rope_theta`` / ``rope_scaling`` fields 4.x reads; 5.x reads
  those as well and arrives at the same ``rope_parameters``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: the transformers versions CI proves (full suite on 4.51.3, the compatibility subset on the ends)
TRANSFORMERS_RANGE = SpecifierSet(">=4.51,<6")
INSTALL = "pip install 'transformers>=4.51,<6'"


class StackError(ImportError):
    """The installed transformers (or AutoAWQ) is outside what this library runs on."""


def transformers_version() -> Version:
    """The installed transformers' version (imports transformers' version module only)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return Version(version("transformers"))
    except PackageNotFoundError as exc:
        raise StackError(f"transformers is not installed: {INSTALL}") from exc


def check_transformers(found: Version | None = None) -> Version:
    """Raise :class:`StackError` naming the version and the range if transformers is outside it."""
    found = transformers_version() if found is None else found
    if found.release[:2] < (4, 51):
        raise StackError(
            f"transformers {found} is too old: AutoAWQ 0.2.9 imports transformers.models.qwen3, added in 4.51.0. "
            f"This library runs on transformers {TRANSFORMERS_RANGE}: {INSTALL}")
    if found.release[0] >= 6:
        raise StackError(f"transformers {found} is newer than this library has been tested with "
                         f"({TRANSFORMERS_RANGE}): {INSTALL}")
    return found


def at_least(major: int, minor: int) -> bool:
    return transformers_version().release[:2] >= (major, minor)


def require_awq() -> ModuleType:
    """``import awq`` on every supported transformers: the range checked first, and on 4.57.x the
    ``PytorchGELUTanh`` alias that 5.x restored added before AutoAWQ looks for it."""
    check_transformers()
    activations: Any = importlib.import_module("transformers.activations")
    if not hasattr(activations, "PytorchGELUTanh"):
        activations.PytorchGELUTanh = activations.GELUTanh  # what transformers 5.x itself does
    return importlib.import_module("awq")


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The keyword ``from_pretrained`` / ``from_config`` take a dtype by on this version."""
    return {"dtype": dtype} if at_least(4, 56) else {"torch_dtype": dtype}


def crop_cache(cache: Any, length: int) -> None:
    """Cut a ``DynamicCache`` back to its first ``length`` tokens on every version."""
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)


def static_cache_rewinder(cache: Any, tokens: int) -> Callable[[], None]:
    """What takes back the ``tokens`` tokens a decode step adds to a static cache, so that the
    same step can run again at the same position (decided once, called after every step).
    Before 5.0 a static cache writes where ``cache_position`` says and counts nothing: nothing to
    undo. From 5.0 each layer counts its tokens on the device (``cumulative_length``) and writes
    there, ignoring ``cache_position``; ``crop(-tokens)`` takes the count back, on the device, so
    a CUDA graph replays it too."""
    if any(hasattr(layer, "cumulative_length") for layer in getattr(cache, "layers", ())):
        return lambda: cache.crop(-tokens)
    return lambda: None


def rotary_embedding(model: Any, config: Any, device: torch.device) -> Any:
    """A fresh rotary embedding of ``model``'s class with its buffers computed on ``device``."""
    with torch.device(device):
        return type(model.model.rotary_emb)(config=config)


def register_attention(name: str, function: Callable[..., Any]) -> None:
    """Register an attention function under ``name``, and from 4.53 SDPA's mask builder with it,
    so that transformers hands the function the mask it hands SDPA."""
    from transformers import AttentionInterface

    interface: Any = AttentionInterface
    interface.register(name, function)
    try:
        masking: Any = importlib.import_module("transformers.masking_utils")
    except ImportError:  # before 4.53 every implementation gets the 4-D mask SDPA gets
        return
    masking.AttentionMaskInterface.register(name, masking.sdpa_mask)


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the RoPE fields of both 4.x and 5.x: where 5.x wrote only
    ``rope_parameters``, ``rope_theta`` and ``rope_scaling`` (and ``partial_rotary_factor``) are
    added as 4.x writes them. Per-layer-type parameters (a dict of dicts), which 4.x has no field
    for, are left as they are; :func:`check_rope_fields` refuses them on 4.x."""
    params = config.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" in config or not _flat(params):
        return config
    out = dict(config)
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out["rope_theta"] = params.get("rope_theta", 10000.0)
    out["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    if "partial_rotary_factor" in params:
        out.setdefault("partial_rotary_factor", params["partial_rotary_factor"])
    return out


def check_rope_fields(config: dict[str, Any], where: str) -> None:
    """On 4.x, refuse a config whose RoPE settings 4.x would silently read as the defaults."""
    if at_least(5, 0):
        return
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in config and not _flat(params):
        raise StackError(
            f"{where}: rope_parameters holds per-layer-type RoPE settings, which transformers "
            f"{transformers_version()} cannot read (it would run rope_theta=10000): load it with transformers 5.x")


def _flat(params: dict[str, Any]) -> bool:
    return not any(isinstance(v, dict) for v in params.values())
