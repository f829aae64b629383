"""Several devices: a selection per device, and each layer's kernel for the device it lands on.

A model spread over a device map (accelerate's: module-name prefix -> GPU index, ``"cpu"`` or
``"disk"``) runs each layer on its device, so the kernel is chosen per device: mixed machines (an
A100 beside an L4, a data-centre card beside a display card) get the right kernel on each.
:func:`plan_devices` makes one :class:`~awq_kernel_select.select.Selection` per device among the
rows that run this library's modules, and says which device and kernel each layer gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from .detect import Detection, detect_compute_capability
from .modules import AWQLinear
from .policy import DEFAULT_TABLE, PolicyTable
from .runners import OursRunner
from .select import Selection, select_kernel

Placement = int | str  # a GPU index, "cpu" or "disk" (offloaded: runs on the CPU)


@dataclass(frozen=True)
class DevicePlan:
    """``selections``: per device of the map (``"cuda:0"``, ``"cpu"``), the selection made for it;
    ``layers``: per packed layer, where it is placed (``"cuda:1"``, ``"cpu"``, ``"disk"``: offloaded,
    run on the CPU) and the kernel it runs."""

    selections: Mapping[str, Selection]
    layers: Mapping[str, tuple[str, str]]

    def explain(self) -> str:
        lines = [f"{device}: {s.name} ({s.reasons[0]})" for device, s in self.selections.items()]
        return "\n".join(lines)


def placement_label(placement: Placement) -> str:
    if isinstance(placement, int):
        return f"cuda:{placement}"
    return "cuda:0" if str(placement) == "cuda" else str(placement)


def device_name(placement: Placement) -> str:
    """The device a placement runs on: offloaded ("disk") layers are streamed in and run on the CPU."""
    label = placement_label(placement)
    return "cpu" if label == "disk" else label


def placement_of(name: str, device_map: Mapping[str, Placement]) -> Placement:
    """The device of module ``name``: that of the longest prefix of it in ``device_map``."""
    best = None
    for prefix in device_map:
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None:
        raise KeyError(f"{name} is in no entry of the device map ({', '.join(device_map)})")
    return device_map[best]


def ours_only(table: PolicyTable) -> PolicyTable:
    """The rows that run this library's modules (a model spread over devices is ours per layer)."""
    return PolicyTable([row for row in table if isinstance(row.runner, OursRunner)])


def plan_devices(device_map: Mapping[str, Placement], layer_names: list[str], *, workload: Any = "interactive",
                 checkpoint_version: str | None = None, zero_point: bool | None = None,
                 detection: Detection | None = None, table: PolicyTable | None = None,
                 probes: Any = None) -> DevicePlan:
    """One selection per device of ``device_map`` (rows of this library's modules only), and the
    device and kernel of each of ``layer_names``."""
    rows = ours_only(DEFAULT_TABLE if table is None else table)
    devices = {device_name(p) for p in device_map.values()}
    needs_gpu = any(name.startswith("cuda") for name in devices)
    found = detection if detection is not None or not needs_gpu else detect_compute_capability()
    selections: dict[str, Selection] = {}
    for name in sorted(devices):
        where: str | int = int(name.split(":")[1]) if name.startswith("cuda:") else "cpu"
        selections[name] = select_kernel(workload=workload, checkpoint_version=checkpoint_version, device=where,
                                         zero_point=zero_point, detection=found, table=rows, probes=probes)
    layers = {}
    for layer in layer_names:
        placement = placement_of(layer, device_map)
        layers[layer] = (placement_label(placement), selections[device_name(placement)].name)
    return DevicePlan(selections, layers)


def apply_plan(model: nn.Module, plan: DevicePlan) -> None:
    """Give each packed layer the layout, path and dispatch plan of its device's selection."""
    for name, (placement, _) in plan.layers.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, AWQLinear)
        selection = plan.selections[device_name(placement)]
        runner = selection.kernel.runner
        assert isinstance(runner, OursRunner)
        layout = layer.layout if runner.layout == "checkpoint" else (runner.layout or selection.layout)
        if layout != layer.layout:
            parent, _, attr = name.rpartition(".")
            layer = layer.to_layout(layout)
            setattr(model.get_submodule(parent), attr, layer)
        layer.path = runner.path
        layer.dispatch = selection.plan
