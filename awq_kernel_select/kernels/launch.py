"""Launch Triton kernels with little Python per call.

``kernel[grid](...)`` binds the arguments, computes a specialization key and looks the compiled
kernel up on every call. In eager decode that costs more CPU than the GPU work it launches
(7 linear layers x 32 blocks per token). So after the first launch of a specialization we keep
Triton's compiled kernel and call its launcher directly, as ``JITFunction.run`` itself does.

The cache key holds everything Triton specializes on: the kernel, its constexprs, warps and
stages, every integer argument's exact value, every tensor argument's dtype and 16-byte
alignment, and the current device. Set ``AWQ_KERNEL_SELECT_FAST_LAUNCH=0`` to always go through
``kernel[grid]``; the fast path is also off under ``TRITON_INTERPRET=1``, with a Triton older
than ``triton.knobs`` (3.4), and if this Triton's compiled kernels lack the launcher attributes
(then a warning says so once). Launch hooks (profilers) are called as Triton calls them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch

FAST_LAUNCH = os.environ.get("AWQ_KERNEL_SELECT_FAST_LAUNCH", "1") != "0"
_MAX_ENTRIES = 4096

Launcher = Callable[[tuple[int, int, int], int, tuple[Any, ...]], None]
_LAUNCHERS: dict[tuple[Any, ...], Launcher] = {}
_disabled_because: str | None = None


try:
    from triton import knobs as _knobs
except ImportError:  # an older Triton without knobs: no direct launches
    _knobs = None


def _active(hook: Any) -> Any:
    """The hook, or None when it is Triton's (3.5+) empty ``HookChain``: nothing to call."""
    return None if hook is None or getattr(hook, "calls", True) == [] else hook


def _direct_launcher(compiled: Any) -> Launcher | None:
    """A function that launches ``compiled`` without Triton's binder, or None if not possible.

    Launch hooks (profilers) are honoured as ``JITFunction.run`` honours them.
    """
    global _disabled_because
    try:
        run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
        metadata = compiled.launch_metadata
    except AttributeError as exc:
        if _disabled_because is None:
            _disabled_because = f"this Triton's compiled kernel has no {exc.name!r}"
            warnings.warn(f"awq_kernel_select: direct kernel launches are off ({_disabled_because}); "
                          "every launch goes through kernel[grid] (slower in eager mode)", stacklevel=3)
        return None
    runtime = _knobs.runtime

    def launch_direct(grid: tuple[int, int, int], stream: int, values: tuple[Any, ...]) -> None:
        enter, exit_ = _active(runtime.launch_enter_hook), _active(runtime.launch_exit_hook)
        meta = None if enter is None and exit_ is None else metadata(grid, stream, *values)
        run(grid[0], grid[1], grid[2], stream, function, packed, meta, enter, exit_, *values)

    return launch_direct


def interpreting() -> bool:
    """Triton runs kernels in its Python interpreter (``TRITON_INTERPRET=1``, the CPU tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def direct_launches_possible() -> bool:
    return FAST_LAUNCH and _disabled_because is None and _knobs is not None and not interpreting()


def launch(kernel: Any, grid: tuple[int, int, int], args: tuple[Any, ...], meta: dict[str, Any],
           num_warps: int, num_stages: int, launch_pdl: bool = False) -> Launcher | None:
    """``kernel[grid](*args, **meta, num_warps=..., num_stages=...)``, through the cache when safe.

    ``meta`` must list the constexprs in the order of the kernel's signature, after ``args``;
    ``launch_pdl`` launches with programmatic dependent launch (the kernel must take it as its
    ``PDL`` constexpr too, which puts it in the cache key).
    Returns the direct launcher for this specialization (None where there is none): calling it
    with ``(grid, stream, (*args, *meta.values()))`` for arguments of the same specialization
    repeats the launch.
    """
    options = {"launch_pdl": True} if launch_pdl else {}
    if not direct_launches_possible():
        kernel[grid](*args, **meta, num_warps=num_warps, num_stages=num_stages, **options)
        return None
    device = torch.cuda.current_device()
    key = (kernel, device, num_warps, num_stages, *meta.values(),
           *[(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args])
    direct = _LAUNCHERS.get(key)
    if direct is not None:
        direct(grid, torch._C._cuda_getCurrentRawStream(device), (*args, *meta.values()))
        return direct
    compiled = kernel[grid](*args, **meta, num_warps=num_warps, num_stages=num_stages, **options)
    made = _direct_launcher(compiled)
    if made is not None:
        if len(_LAUNCHERS) >= _MAX_ENTRIES:
            _LAUNCHERS.clear()
        _LAUNCHERS[key] = made
    return made
