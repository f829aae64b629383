"""Several devices (devices.py): a selection per device, each layer's kernel for its device, and a
model spread over a device map by accelerate (CPU and disk here; GPUs on a multi-GPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from awq_kernel_select import CC, load_quantized, quantize, select_kernel
from awq_kernel_select.detect import Detection, DeviceIndexError, GpuInfo
from awq_kernel_select.devices import plan_devices

import tiny

OK = tiny.ALL_PROBES_OK
#: a data-centre card beside an older one: Triton kernels on the first, not on the second
MIXED = Detection((GpuInfo(0, "NVIDIA H100 80GB HBM3", "cuda", "torch", CC(9, 0), multiprocessors=132),
                   GpuInfo(1, "Tesla V100-SXM2-16GB", "cuda", "torch", CC(7, 0), multiprocessors=80)), "torch")
LAYERS = [f"model.layers.{i}.mlp.{p}" for i in (0, 1) for p in ("up_proj", "down_proj")]


def test_each_gpu_gets_its_own_selection() -> None:
    assert select_kernel(device=0, detection=MIXED, probes=OK).name == "aks_gemv"
    second = select_kernel(device=1, detection=MIXED, probes=OK)
    assert second.name == "torch_dequant" and second.target.name == "Tesla V100-SXM2-16GB"
    with pytest.raises(DeviceIndexError, match="device=2: 2 GPU"):
        select_kernel(device=2, detection=MIXED, probes=OK)


def test_a_device_map_over_mixed_gpus_gives_each_layer_its_devices_kernel() -> None:
    plan = plan_devices({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": "cpu"},
                        LAYERS, detection=MIXED, probes=OK, checkpoint_version="gemm")
    assert plan.layers["model.layers.0.mlp.up_proj"] == ("cuda:0", "aks_gemv")
    assert plan.layers["model.layers.1.mlp.down_proj"] == ("cuda:1", "torch_dequant")
    assert set(plan.selections) == {"cuda:0", "cuda:1", "cpu"}
    assert plan.selections["cuda:0"].plan is not None and plan.selections["cuda:0"].plan.multiprocessors == 132
    assert "aks_gemv" in plan.explain() and "torch_dequant" in plan.explain()


def test_only_rows_that_run_this_librarys_modules_serve_a_device_map() -> None:
    """AutoAWQ's loader places a model on one device: a spread model runs our modules per layer."""
    plan = plan_devices({"model": 1}, LAYERS, detection=MIXED, probes=OK, checkpoint_version="gemm")
    assert {kernel for _, kernel in plan.layers.values()} == {"torch_dequant"}  # not autoawq_gemm, which fits 7.0


def test_a_model_spread_over_cpu_and_disk_places_every_layer_and_computes_the_same(fp16_dir: Path,
                                                                                 tmp_path: Path) -> None:
    quantize(fp16_dir, tmp_path / "q", method="rtn", group_size=32)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    spread = load_quantized(tmp_path / "q", device_map=device_map)
    whole = load_quantized(tmp_path / "q", device="cpu")
    devices = spread.awq_layer_devices
    assert len(devices) == 14 and {d for n, d in devices.items() if ".layers.1." in n} == {"disk"}
    assert {d for n, d in devices.items() if ".layers.0." in n} == {"cpu"}
    assert spread.model.hf_device_map["model.layers.1"] == "disk"  # offloaded by accelerate, streamed in per call
    ids = torch.tensor([[1, 17, 40, 99, 3]])
    with torch.no_grad():
        assert torch.equal(spread.model(ids).logits, whole.model(ids).logits)
    with pytest.raises(ValueError, match="device or device_map"):
        load_quantized(tmp_path / "q", device="cpu", device_map=device_map)
