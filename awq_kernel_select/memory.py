"""The memory plan of a quantization, made before any work: what each device will hold at its peak.

AutoAWQ's quantizer keeps the model where it was loaded (the CPU) and moves one decoder block at a
time to a GPU (block i to ``cuda:i % count``), with the calibration activations. So a model
larger than any one GPU quantizes as long as its largest block and the activations fit one GPU;
the host holds the whole model. Per device, the plan counts:

* host: every parameter of the model in the dtype it was loaded in;
* each GPU: the largest decoder block (fp16), a second copy of it (the scale search restores the
  block after each of its trial scalings) and the activations: the block's input and output and the
  inputs it keeps per linear (about ``samples x seq_len x (6 x hidden + 2 x intermediate)`` values
  for a Llama-style block, fp16 on a GPU). An estimate: it says what dominates, not the byte.

:func:`plan_memory` returns the plan; :func:`check_memory` raises :class:`MemoryPlanError` naming
the device, what it needs and what it has (its free memory, or ``max_memory``'s cap) before
calibration starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

GiB = float(2**30)


class MemoryPlanError(ValueError):
    """A quantization that cannot fit; raised before any work."""


@dataclass(frozen=True)
class DeviceNeed:
    device: str
    need_bytes: int
    have_bytes: int | None  # free memory or the max_memory cap; None: not known
    what: str

    def fits(self) -> bool:
        return self.have_bytes is None or self.need_bytes <= self.have_bytes

    def line(self) -> str:
        have = "unknown" if self.have_bytes is None else f"{self.have_bytes / GiB:.2f} GiB"
        return f"{self.device}: needs ~{self.need_bytes / GiB:.2f} GiB ({self.what}); has {have}"


@dataclass(frozen=True)
class MemoryPlan:
    devices: tuple[DeviceNeed, ...]

    def format(self) -> str:
        return "memory plan (peak per device, estimated):\n" + "\n".join(f"  {d.line()}" for d in self.devices)


def parse_bytes(value: int | str) -> int:
    """``max_memory`` values as accelerate takes them: bytes, or "10GiB", "500MB"..."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace(" ", "")
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, size in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * size)
    raise ValueError(f"max_memory value {value!r}: give bytes or a size such as '20GiB'")


def _bytes(module: nn.Module, element_size: int | None = None) -> int:
    return sum(p.numel() * (element_size or p.element_size()) for p in module.parameters())


def plan_memory(model: nn.Module, blocks: list[nn.Module], config: Any, samples: int, seq_len: int,
                max_memory: Mapping[int | str, int | str] | None = None) -> MemoryPlan:
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    caps = {str(k) if not isinstance(k, int) else f"cuda:{k}": parse_bytes(v) for k, v in (max_memory or {}).items()}
    host = _bytes(model)
    needs = [DeviceNeed("cpu", host, caps.get("cpu"), "the whole model")]
    block = max((_bytes(b, 2) for b in blocks), default=0)
    activations = samples * seq_len * (6 * hidden + 2 * intermediate) * 2
    work = 2 * block + activations
    what = f"largest block {block / GiB:.2f} GiB x 2 + activations {activations / GiB:.2f} GiB"
    if torch.cuda.is_available():
        for i in range(min(torch.cuda.device_count(), max(len(blocks), 1))):
            free = int(torch.cuda.mem_get_info(i)[0])
            cap = caps.get(f"cuda:{i}")
            needs.append(DeviceNeed(f"cuda:{i}", work, min(free, cap) if cap is not None else free, what))
    else:  # the blocks are quantized on the CPU too
        needs[0] = DeviceNeed("cpu", host + work, caps.get("cpu"), f"the whole model + {what}")
    return MemoryPlan(tuple(needs))


def check_memory(plan: MemoryPlan) -> None:
    short = [d for d in plan.devices if not d.fits()]
    if short:
        raise MemoryPlanError("this quantization does not fit: " + "; ".join(d.line() for d in short)
                              + ". Lower max_calib_samples or max_calib_seq_len, or give a device with more memory")
