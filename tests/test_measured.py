"""The one store of measured facts (measured.py) and the dispatch plan it gives the layers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from awq_kernel_select import CC, KernelSpec, OursRunner, select_kernel
from awq_kernel_select import layouts as L
from awq_kernel_select import measured
from awq_kernel_select.detect import Detection, GpuInfo
from awq_kernel_select.kernels import awq_linear
from awq_kernel_select.kernels.dispatch import CPU_PLAN, DispatchPlan, TunedEntry, gemm_config
from awq_kernel_select.kernels.hopper import HopperConfig
from awq_kernel_select.kernels.matmul import MatmulConfig, _geometry
from awq_kernel_select.policy import DEFAULT_TABLE

import tiny

OK = tiny.ALL_PROBES_OK


def gpu(name: str, sms: int | None = 132, cap: CC = CC(9, 0)) -> Detection:
    return Detection((GpuInfo(0, name, "cuda", "torch", cap, multiprocessors=sms),), "torch")


def tile(layout: str, k: int, n: int, m: int, block_n: int, path: str | None = None) -> dict[str, Any]:
    block_m = 1 if m == 1 else 16
    entry: dict[str, Any] = {"layout": layout, "K": k, "N": n, "G": 32, "M": m,
                             "config": {"block_m": block_m, "block_n": block_n, "block_k": 32, "split_k": 2}}
    return entry if path is None else {**entry, "path": path}


def document(name: str, tiles: list[dict[str, Any]], sms: int | None = 132, **extra: Any) -> dict[str, Any]:
    entry = {"gpu_name": name, "capability": [9, 0], "tiles": tiles, **extra}
    if sms is not None:
        entry["multiprocessors"] = sms
    return {"schema": 2, "gpus": {f"{name}|9.0": entry}}


@pytest.fixture(autouse=True)
def no_user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWQ_KERNEL_SELECT_CACHE", str(tmp_path / "overlay.json"))
    monkeypatch.delenv("AWQ_KERNEL_SELECT_TUNED", raising=False)


def test_a_changed_tuned_file_setting_is_used_by_the_next_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read at each call, not frozen at the first."""
    for name, block_n in (("one.json", 32), ("two.json", 64)):
        (tmp_path / name).write_text(json.dumps(document("Fake GPU", [tile("gemv", 64, 32, 1, block_n)])))
    monkeypatch.setenv("AWQ_KERNEL_SELECT_TUNED", str(tmp_path / "one.json"))
    first = select_kernel(workload=1, detection=gpu("Fake GPU"), probes=OK)
    monkeypatch.setenv("AWQ_KERNEL_SELECT_TUNED", str(tmp_path / "two.json"))
    second = select_kernel(workload=1, detection=gpu("Fake GPU"), probes=OK)
    key = ("gemv", 64, 32, 32, 1)
    assert first.plan is not None and first.plan.tiles[key].config.block_n == 32
    assert second.plan is not None and second.plan.tiles[key].config.block_n == 64
    assert second.plan.decide(torch.device("cuda"), "gemv", 1, 32, 64, 32)[1].block_n == 64
    assert any("dispatch plan: tiles tuned on this GPU model (two.json)" in r for r in second.reasons)


def test_the_selection_carries_the_plan_of_the_gpu_it_selects_for() -> None:
    """Tiles, SMs and PDL of the detected GPU; the CPU's plan on the CPU; none for a what-if."""
    h100 = select_kernel(workload=1, detection=gpu("NVIDIA H100 80GB HBM3"), probes=OK)
    assert h100.plan is not None and h100.plan.multiprocessors == 132 and h100.plan.pdl_capable
    assert ("gemv", 4096, 4096, 128, 1) in h100.plan.tiles
    assert h100.to_dict()["plan"]["tuned_tiles"] == len(h100.plan.tiles) > 0
    a100 = select_kernel(workload=1, detection=gpu("NVIDIA A100-SXM4-80GB", 108, CC(8, 0)), probes=OK)
    assert a100.plan is not None and not a100.plan.tiles and not a100.plan.pdl_capable
    assert a100.plan.multiprocessors == 108 and "heuristic tiles" in a100.plan.tiles_note
    assert select_kernel(device="cpu").plan is CPU_PLAN
    assert select_kernel((9, 0), probes=OK).plan is None  # a capability names no GPU model


def test_a_gpu_without_tiles_uses_a_same_chip_gpus_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact name first; else the tiles of a GPU model with the same capability and SM count
    (first in file order); another SM count, or a file that records none, gives no tiles.
    A file in the format before schema 2 (gpu, chip, entries) is read too."""
    files = {"a.json": document("GPU A", [tile("gemv", 64, 32, 1, 32)]),
             "b.json": {"gpu": "GPU B", "chip": {"capability": [9, 0], "multiprocessors": 132},
                        "entries": [tile("gemv", 64, 32, 1, 64)]},
             "old.json": document("GPU Old", [tile("gemv", 64, 32, 1, 16)], sms=None)}
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    monkeypatch.setenv("AWQ_KERNEL_SELECT_TUNED", os.pathsep.join(str(tmp_path / n) for n in files))
    key = ("gemv", 64, 32, 32, 1)
    own = measured.facts_for("GPU B", (9, 0), 132)
    assert own is not None and own.tiles_from is None and own.tiles[key].config.block_n == 64
    sibling = measured.facts_for("GPU New", (9, 0), 132)
    assert sibling is not None and sibling.tiles_from == "GPU A" and sibling.tiles[key].config.block_n == 32
    assert "tuned on GPU A (the same chip: sm_90, 132 SMs" in sibling.describe_tiles()
    assert measured.facts_for("GPU New", (9, 0), 114) is None
    assert measured.facts_for("GPU New", (8, 0), 132) is None
    assert measured.facts_for("GPU New", (9, 0)) is None  # no SM count: no sibling
    s = select_kernel(workload=1, detection=gpu("GPU New"), probes=OK)
    assert any("tuned on GPU A" in r for r in s.reasons)
    s = select_kernel(workload=1, detection=gpu("GPU New", 114), probes=OK)
    assert any("heuristic tiles" in r for r in s.reasons)


def test_a_gpu_with_some_tiles_of_its_own_takes_the_rest_from_a_same_chip_gpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep of one path or a few shapes on a GPU (its file, or the user's overlay) adds to the
    same-chip model's table: its own tiles win where both have one, the other model's serve the
    rest, and the selection says which came from where."""
    (tmp_path / "a.json").write_text(json.dumps(document("GPU A", [tile("gemv", 64, 32, 1, 32),
                                                                  tile("gemv", 64, 32, 16, 32)])))
    (tmp_path / "b.json").write_text(json.dumps(document("GPU B", [tile("gemv", 64, 32, 16, 64, path="gemm")])))
    monkeypatch.setenv("AWQ_KERNEL_SELECT_TUNED", os.pathsep.join(str(tmp_path / n) for n in ("a.json", "b.json")))
    b = measured.facts_for("GPU B", (9, 0), 132)
    assert b is not None and b.tiles_from == "GPU A" and b.own_tiles == 1
    assert b.tiles[("gemv", 64, 32, 32, 16)].config.block_n == 64  # its own
    assert b.tiles[("gemv", 64, 32, 32, 1)].config.block_n == 32  # GPU A's
    assert "1 of its tiles tuned on this GPU model, 1 on GPU A (the same chip" in b.describe_tiles()
    a = measured.facts_for("GPU A", (9, 0), 132)  # nothing to take from GPU B: all its keys are GPU A's too
    assert a is not None and a.tiles_from is None and len(a.tiles) == 2


def test_the_shipped_h100_file_serves_the_h200_not_the_h100_pcie() -> None:
    """Measured on an H200 (docs/kernels.md): the H100's M = 1 tiles ran 1.89-2.75x fp16 there
    against the heuristic's 1.86-2.45x. The 114-SM H100 PCIe gets none."""
    h200 = measured.facts_for("NVIDIA H200", (9, 0), 132)
    assert h200 is not None and h200.tiles_from == "NVIDIA H100 80GB HBM3" and h200.tiles
    assert measured.facts_for("NVIDIA H100 PCIe", (9, 0), 114) is None


def test_shipped_files_hold_only_tiles_the_kernels_accept() -> None:
    """Every tile of every shipped file passes the reader's checks and is one its layout's
    kernel runs at its shape (a bad one would fail only on that GPU, at that shape)."""
    files = sorted(measured.SHIPPED_DIR.glob("*.json"))
    assert files
    for path in files:
        entries, problems = measured._read(path)
        assert entries and not problems, (path.name, problems)
        for raw in entries.values():
            assert raw["source"] and "\n" not in raw["source"]
            for t in raw["tiles"]:
                cfg = MatmulConfig(**t["config"])
                if t.get("path") == "wgmma":  # the Gluon tile: its own checks
                    HopperConfig.from_matmul(cfg).check(t["G"])
                    continue
                _, _, split_k = _geometry(cfg, t["layout"] == "gemv", t["G"], t["M"], t["N"], t["K"])
                assert 1 <= split_k <= cfg.split_k, (path.name, t)
        assert json.loads(measured.dumps(json.loads(path.read_text()))) == json.loads(path.read_text())


def test_tile_lookup_falls_back_to_the_next_bucket_in_its_regime() -> None:
    """M = 5..8 with no bucket-8 tile uses bucket 16's; never crosses into the M > 16 regime."""
    small = TunedEntry(MatmulConfig(16, 32, 32, 2), None)
    big = TunedEntry(MatmulConfig(64, 32, 32, 1), "dequant")
    plan = DispatchPlan(tiles={("gemm", 64, 32, 32, 16): small, ("gemm", 64, 32, 32, 64): big})
    assert plan.tuned_entry("gemm", 7, 32, 64, 32) is small
    assert plan.tuned_entry("gemm", 17, 32, 64, 32) is big
    assert plan.tuned_entry("gemm", 100, 32, 64, 32) is None  # no bucket >= 128
    assert plan.tuned_entry("gemv", 7, 32, 64, 32) is None
    cuda = torch.device("cuda")
    assert plan.decide(cuda, "gemm", 40, 32, 64, 32) == ("dequant", big.config)  # measured: dequant won


def test_a_measured_wgmma_tile_routes_its_shape_to_the_wgmma_path_only() -> None:
    """A table entry that says "wgmma" sends auto there with its tile, at any M below 1024; a
    forced "gemm" or "gemv" at that shape gets the heuristic tile, never the wgmma tile; without
    an entry auto never picks wgmma."""
    wg = TunedEntry(HopperConfig(64, 128, 64, 2, 4, 2).as_matmul(), "wgmma")
    plan = DispatchPlan(tiles={("gemv", 4096, 11008, 128, 64): wg}, multiprocessors=132, wgmma_capable=True)
    cuda = torch.device("cuda")
    assert plan.decide(cuda, "gemv", 64, 11008, 4096, 128) == ("wgmma", wg.config)
    assert plan.decide(cuda, "gemv", 64, 11008, 4096, 128, path="gemm") == (
        "gemm", gemm_config(64, 11008, 4096, 128, True))
    untimed = DispatchPlan(multiprocessors=132, wgmma_capable=True)
    assert all(untimed.decide(cuda, "gemv", m, 11008, 4096, 128)[0] != "wgmma" for m in (32, 64, 256, 4096))
    chosen, cfg = untimed.decide(cuda, "gemv", 40, 11008, 4096, 128, path="wgmma")
    assert chosen == "wgmma" and HopperConfig.from_matmul(cfg) == HopperConfig(64, 128, 64, 2, 4, 2, w_first=True)
    few = TunedEntry(HopperConfig(16, 128, 64, 2, 4, 8, w_first=True).as_matmul(), "wgmma")
    plan.tiles[("gemv", 4096, 11008, 128, 16)] = few  # type: ignore[index]
    plan.forget()
    assert plan.decide(cuda, "gemv", 12, 11008, 4096, 128) == ("wgmma", few.config)  # also below M = 16
    assert plan.decide(cuda, "gemv", 12, 11008, 4096, 128, path="gemv")[1].block_m == 16  # the heuristic tile


def test_prefill_takes_a_wgmma_tile_only_from_a_prefill_bucket() -> None:
    """M >= 1024 looks up the 1024 and 4096 buckets; a wgmma tile timed at M = 256 still serves
    M = 257..1023 as bucket 256 always did, but not prefill, which stays on dequantize + cuBLAS
    unless a prefill bucket says wgmma."""
    cuda = torch.device("cuda")
    key = ("gemv", 4096, 11008, 128)
    at_256 = TunedEntry(HopperConfig(128, 128, 64, 2, 8).as_matmul(), "wgmma")
    plan = DispatchPlan(tiles={(*key, 256): at_256}, multiprocessors=132, wgmma_capable=True)
    assert plan.decide(cuda, "gemv", 600, 11008, 4096, 128) == ("wgmma", at_256.config)
    assert plan.decide(cuda, "gemv", 2048, 11008, 4096, 128)[0] == "dequant"
    at_4096 = TunedEntry(HopperConfig(128, 256, 64, 3, 8).as_matmul(), "wgmma")
    plan = DispatchPlan(tiles={(*key, 256): at_256, (*key, 4096): at_4096}, multiprocessors=132, wgmma_capable=True)
    assert plan.decide(cuda, "gemv", 2048, 11008, 4096, 128) == ("wgmma", at_4096.config)
    assert plan.decide(cuda, "gemv", 9000, 11008, 4096, 128) == ("wgmma", at_4096.config)
    tl_dot = TunedEntry(MatmulConfig(64, 128, 64, 1, 4, 3), "gemm")
    old = DispatchPlan(tiles={(*key, 256): tl_dot})  # a table without prefill buckets: as before
    assert old.decide(cuda, "gemv", 300, 11008, 4096, 128) == ("gemm", tl_dot.config)
    assert old.decide(cuda, "gemv", 2048, 11008, 4096, 128)[0] == "dequant"
    assert old.config_for("gemm", "gemv", 2048, 11008, 4096, 128) == tl_dot.config


def test_wgmma_tiles_are_read_for_the_gemv_layout_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"layout": "gemv", "K": 4096, "N": 11008, "G": 128, "M": 64, "path": "wgmma",
            "config": dataclasses.asdict(HopperConfig(64, 128, 64, 2, 4, 2).as_matmul())}
    path = tmp_path / "t.json"
    measured.save_measurement("Fake GPU", (9, 0), tiles=[good], path=path)
    with pytest.raises(ValueError, match="GEMV layout"):
        measured.save_measurement("Fake GPU", (9, 0), tiles=[{**good, "layout": "gemm"}], path=path)
    with pytest.raises(ValueError, match="block_m"):
        measured.save_measurement("Fake GPU", (9, 0), path=path,
                                  tiles=[{**good, "config": {**good["config"], "block_m": 32}}])
    regs = {**good, "M": 16, "config": dataclasses.asdict(HopperConfig(16, 128, 64, 2, 4, 4, True, True).as_matmul())}
    measured.save_measurement("Fake GPU", (9, 0), tiles=[regs], path=path)  # the A-register tile reads back as itself
    monkeypatch.setenv("AWQ_KERNEL_SELECT_TUNED", str(path))
    facts = measured.facts_for("Fake GPU", (9, 0), use_overlay=False)
    assert facts is not None and HopperConfig.from_matmul(facts.tiles[("gemv", 4096, 11008, 128, 16)].config).a_regs
    wide = {**regs, "G": 64, "config": {**regs["config"], "block_k": 128}}
    with pytest.raises(ValueError, match="block_k .*group size 64"):  # a K step lies in one group
        measured.save_measurement("Fake GPU", (9, 0), path=path, tiles=[wide])
    with pytest.raises(ValueError, match="a_regs is for the wgmma tile"):
        measured.save_measurement("Fake GPU", (9, 0), path=path, tiles=[{**regs, "path": "gemm"}])


def test_the_wgmma_path_off_a_hopper_gpu_says_what_it_needs() -> None:
    x = torch.randn(20, 256, dtype=torch.float16)  # on the CPU, here and on a GPU machine
    integers = L.quantize_rtn(torch.randn(128, 256) * 0.05, 128)
    with pytest.raises(ValueError, match="sm_90"):
        awq_linear(x, L.pack(*integers, 128, "gemv"), path="wgmma")
    a100 = measured.dispatch_plan(None, "NVIDIA A100-SXM4-80GB", (8, 0), 108)
    assert not a100.wgmma_capable and measured.dispatch_plan(None, "NVIDIA H100 80GB HBM3", (9, 0), 132).wgmma_capable
    with pytest.raises(ValueError, match="sm_90.*A100"):
        awq_linear(x, L.pack(*integers, 128, "gemv"), path="wgmma", plan=a100)
    with pytest.raises(ValueError, match="GEMV layout"):
        awq_linear(x, L.pack(*integers, 128, "gemm"), path="wgmma")


def test_bf16_x_passes_over_the_four_token_tiles_at_four_tokens() -> None:
    """The four-token tile of bucket 4 serves fp16 x at M = 3 and 4 and bf16 x at M = 3 (where it
    dots three tokens); bf16 x at M = 4 takes bucket 16's, tuned or not."""
    four = TunedEntry(MatmulConfig(4, 128, 128, 4, prefetch=True), None)
    sixteen = TunedEntry(MatmulConfig(16, 128, 128, 4, 8, 1, w_first=True, prefetch=True), None)
    plan = DispatchPlan(tiles={("gemv", 4096, 4096, 128, 4): four, ("gemv", 4096, 4096, 128, 16): sixteen})
    cuda = torch.device("cuda")
    assert plan.decide(cuda, "gemv", 3, 4096, 4096, 128) == ("gemv", four.config)
    assert plan.decide(cuda, "gemv", 3, 4096, 4096, 128, bf16=True) == ("gemv", four.config)
    assert plan.decide(cuda, "gemv", 4, 4096, 4096, 128, bf16=True) == ("gemv", sixteen.config)
    assert plan.decide(cuda, "gemv", 8, 4096, 4096, 128) == ("gemv", sixteen.config)
    untimed = DispatchPlan()  # the heuristic makes the same choice
    assert untimed.decide(cuda, "gemv", 3, 4096, 4096, 128)[1].block_m == 4
    assert untimed.decide(cuda, "gemv", 3, 4096, 4096, 128, bf16=True)[1].block_m == 4
    assert untimed.decide(cuda, "gemv", 4, 4096, 4096, 128, bf16=True)[1].block_m == 16


def test_the_one_writer_merges_tiles_and_crossover_and_refuses_what_it_would_not_read(tmp_path: Path) -> None:
    path = tmp_path / "overlay.json"
    measured.save_measurement("Fake GPU", (9, 0), multiprocessors=132, source="a sweep",
                              tiles=[tile("gemv", 64, 32, 1, 32), tile("gemm", 64, 32, 16, 32)], path=path)
    crossover = measured.MeasuredCrossover("Fake GPU", (9, 0), 4, "2026-12-07")
    measured.save_measurement("Fake GPU", (9, 0), crossover=crossover, tiles=[tile("gemv", 64, 32, 1, 64)], path=path)
    facts = measured.facts_for("Fake GPU", (9, 0))
    assert facts is not None and facts.crossover == crossover and facts.multiprocessors == 132
    assert facts.tiles[("gemv", 64, 32, 32, 1)].config.block_n == 64  # measured again: replaced
    assert ("gemm", 64, 32, 32, 16) in facts.tiles  # not measured again: kept
    assert measured.load_all(path)["Fake GPU|9.0"] == crossover
    with pytest.raises(ValueError, match="not one of the M buckets"):
        measured.save_measurement("Fake GPU", (9, 0), tiles=[tile("gemv", 64, 32, 3, 32)], path=path)
    with pytest.raises(ValueError, match="measured on Other GPU"):
        measured.save_measurement("Fake GPU", (9, 0), crossover=measured.MeasuredCrossover("Other GPU", (9, 0), 4),
                                  path=path)
    assert not list(tmp_path.glob(".measured-*"))


def test_the_overlay_wins_over_the_shipped_tiles_and_a_bad_tile_is_dropped_alone(tmp_path: Path) -> None:
    name, key = "NVIDIA H100 80GB HBM3", ("gemv", 4096, 4096, 128, 1)
    shipped = measured.facts_for(name, (9, 0))
    assert shipped is not None
    mine = {**tile("gemv", 4096, 4096, 1, 256), "G": 128}
    broken = {**tile("gemv", 4096, 4096, 2, 256), "config": {"block_m": 1, "no_such_field": 3}}
    doc = {"schema": 2, "gpus": {f"{name}|9.0": {"gpu_name": name, "capability": [9, 0], "tiles": [mine, broken]}}}
    (tmp_path / "overlay.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="dropping a tile"):
        facts = measured.facts_for(name, (9, 0))
    assert facts is not None and facts.tiles[key].config.block_n == 256
    assert len(facts.tiles) == len(shipped.tiles)  # the rest still the shipped ones


def test_a_user_row_follows_a_measured_crossover_by_its_field_not_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    measured.save_crossover(measured.MeasuredCrossover("Fake GPU", (9, 0), 8))
    table = DEFAULT_TABLE.copy()
    table.remove("aks_gemv")
    table.register(KernelSpec("my_gemv", "gemv", "mine", min_capability=CC(8, 0), tokens=(1, 1), priority=120,
                              requires=("triton_gpu",), runner=OursRunner(), follows_crossover=True))
    s = select_kernel(workload=4, detection=gpu("Fake GPU"), probes=OK, table=table)
    assert s.name == "my_gemv"
    assert select_kernel(workload=4, detection=gpu("Fake GPU"), probes=OK, table=table, use_measured=False).name == "aks_gemm"


def test_load_hands_the_selections_plan_to_every_layer(tmp_path: Path, fp16_dir: Path) -> None:
    """The runner gives the layers the plan the selection carries (here a plan of our own)."""
    from dataclasses import replace

    from awq_kernel_select import quantize
    from awq_kernel_select.checkpoint import read_checkpoint
    from awq_kernel_select.modules import AWQLinear
    from awq_kernel_select.runners import LoadRequest

    ckpt = tmp_path / "q"
    quantize(str(fp16_dir), ckpt, method="rtn", group_size=32)
    plan = DispatchPlan(tiles_note="a plan of our own")
    selection = replace(select_kernel(device="cpu", checkpoint_version="gemm"), plan=plan)
    wrapper = OursRunner()(LoadRequest(read_checkpoint(ckpt), torch.device("cpu"), selection))
    layers = [m for m in wrapper.model.modules() if isinstance(m, AWQLinear)]
    assert layers and all(m.dispatch is plan for m in layers)


def test_the_kernels_never_ask_which_gpu_they_are_on() -> None:
    """The plan says it: no device-name or device-property query under kernels/."""
    root = Path(measured.__file__).parent / "kernels"
    query = re.compile(r"get_device_(name|properties|capability)|multi_processor_count")
    found = [f"{p.name}:{i}" for p in root.glob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
             if query.search(line)]
    assert not found
