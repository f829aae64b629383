"""The benchmark module on the CPU: statistics, the measured-results cache, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from awq_kernel_select.bench.latency import crossover, time_eager_in_turn
from awq_kernel_select.bench.timing import Timing, copies_to_evict_l2, quantile
from awq_kernel_select.measured import SCHEMA, MeasuredCrossover, load_all, lookup_crossover, save_crossover
from awq_kernel_select.probes import Target
from awq_kernel_select import CC
from awq_kernel_select.modules import AWQLinear


def test_statistics() -> None:
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_us, t.reps) == (3.0, 5)
    assert t.p10_us == pytest.approx(1.4) and t.p90_us == pytest.approx(4.6)
    assert quantile([1.0, 2.0], 0.5) == 1.5
    with pytest.raises(ValueError):
        Timing.from_samples([])
    assert copies_to_evict_l2(8 * 2**20) == 19 and copies_to_evict_l2(10**9) == 2


def test_crossover() -> None:
    sweep = {"aks_gemm": {1: 10.0, 2: 9.0, 4: 8.0}, "aks_gemv": {1: 8.0, 2: 9.5, 4: 12.0}}
    assert crossover(sweep) == 2
    assert crossover({"aks_gemm": {1: 10.0}, "aks_gemv": {1: 5.0}}) is None


H100 = Target("cuda", CC(9, 0), "sm_90", "NVIDIA H100 80GB HBM3")


def test_eager_steps_are_timed_in_turn() -> None:
    """Every round runs each step 2 + reps times, the variants one after the other, and each
    variant's timing pools its samples over the rounds."""
    import time

    calls: list[str] = []

    def step(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)
        return run

    timings = time_eager_in_turn({"slow": step("slow", 0.004), "fast": step("fast", 0.0)}, on_gpu=False, rounds=3,
                                 reps=4)
    assert calls == (["slow"] * 6 + ["fast"] * 6) * 3
    assert timings["slow"].reps == timings["fast"].reps == 12
    assert timings["slow"].median_us > 4000 > timings["fast"].median_us


def test_cache_round_trip_and_other_gpu(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    save_crossover(MeasuredCrossover("NVIDIA H100 80GB HBM3", (9, 0), 2, "2026-11-24"), path)
    save_crossover(MeasuredCrossover("NVIDIA A100-SXM4-80GB", (8, 0), 8), path)
    assert len(load_all(path)) == 2
    found = lookup_crossover(H100, path)
    assert found is not None and found.crossover_tokens == 2
    assert lookup_crossover(Target("cuda", CC(9, 0), "sm_90", "NVIDIA H200"), path) is None
    assert lookup_crossover(Target("cuda", CC(9, 0)), path) is None  # no name: no match
    assert not list(tmp_path.glob(".measured-*"))  # the atomic write left no temp file


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"schema": SCHEMA, "gpus": {"x": {}}}),
                                     json.dumps({"schema": SCHEMA, "gpus": []}), json.dumps({"schema": SCHEMA, "gpus": None}),
                                     json.dumps({"schema": SCHEMA, "gpus": {"x": None}})])
def test_corrupt_cache_warns_and_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring"):
        assert lookup_crossover(H100, path) is None


def test_old_schema_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"schema": 0, "gpus": {}}))
    with pytest.warns(UserWarning, match="schema 0 is not"):
        assert load_all(path) == {}


@pytest.mark.stack
def test_tiny_end_to_end_cpu_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from awq_kernel_select.cli import main

    assert main(["bench", "--out", str(tmp_path), "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "GPU latency could not be measured" in out and "torch_dequant" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["on_gpu"] is False and {r["variant"] for r in data["single"]} == {"fp16", "torch_dequant"}
    assert all(r["decode_eager"]["median_us"] > 0 for r in data["single"])
    assert (tmp_path / "bench.md").read_text().startswith("tiny Llama")


def test_tiny_compiled_cpu_run(tmp_path: Path) -> None:
    """The torch.compile rows: the whole model compiles with fullgraph (the packed linears are
    one operator node each) and runs; aot_eager keeps the test free of a C++ compiler."""
    from awq_kernel_select.cli import main

    assert main(["bench", "--out", str(tmp_path), "--no-save", "--compile", "--compile-backend", "aot_eager",
                 "--batch-sizes", "1"]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    compiled = {r["variant"]: r for r in data["single"] if r["variant"].endswith("+compile")}
    assert set(compiled) == {"fp16+compile", "torch_dequant+compile"}
    assert all(r["decode_eager"]["median_us"] > 0 and r["compile_s"] > 0 for r in compiled.values())
    assert any("torch_dequant+compile: torch.compile (aot_eager, fullgraph)" in n for n in data["notes"])


def test_combo_kernels_are_on_for_compiled_variants_and_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """``measure_compiled(combo_kernels=True)`` compiles under inductor's ``combo_kernels`` and
    restores the setting; ``--no-combo-kernels`` reaches the bench's config."""
    import torch._inductor.config as inductor_config

    from awq_kernel_select.bench import latency
    from awq_kernel_select.bench import run as run_module
    from awq_kernel_select.cli import main

    seen: list[bool] = []
    monkeypatch.setattr(latency, "_measure_compiled", lambda *a, **k: seen.append(inductor_config.combo_kernels))
    latency.measure_compiled(None, "x", combo_kernels=True)
    latency.measure_compiled(None, "x")
    assert seen == [True, False] and inductor_config.combo_kernels is False

    class Stop(Exception):
        pass

    configs: list[run_module.BenchConfig] = []

    def fake_run(cfg: run_module.BenchConfig) -> None:
        configs.append(cfg)
        raise Stop

    monkeypatch.setattr(run_module, "run_benchmark", fake_run)
    for argv in (["bench"], ["bench", "--no-combo-kernels"]):
        with pytest.raises(Stop):
            main(argv)
    assert [c.combo_kernels for c in configs] == [True, False]


def _save_one(args: tuple[str, int]) -> None:
    path, i = args
    save_crossover(MeasuredCrossover(f"GPU {i}", (9, 0), i + 1), Path(path))


def test_concurrent_writers_all_land(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "m.json"
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        pool.map(_save_one, [(str(path), i) for i in range(8)])
    assert sorted(e.crossover_tokens for e in load_all(path).values()) == list(range(1, 9))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".measured-")]


def test_a_bad_entry_is_dropped_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    good = MeasuredCrossover("NVIDIA H100 80GB HBM3", (9, 0), 16)
    path.write_text(json.dumps({"schema": SCHEMA, "gpus": {
        "NVIDIA H100 80GB HBM3|9.0": good.to_dict(),
        "broken|8.0": {"gpu_name": "broken"},
        "NVIDIA A100|8.0": {**good.to_dict(), "crossover_tokens": -5},  # out of range, and names another GPU
        "NVIDIA L4|8.9": {**good.to_dict(), "gpu_name": "NVIDIA L4", "capability": [8, 9], "crossover_tokens": 2.7},
    }}))
    with pytest.warns(UserWarning, match="broken"):
        assert list(load_all(path)) == ["NVIDIA H100 80GB HBM3|9.0"]
    with pytest.warns(UserWarning, match="keeping 1 valid entries"):
        save_crossover(MeasuredCrossover("NVIDIA A100", (8, 0), 8), path)
    assert sorted(load_all(path)) == ["NVIDIA A100|8.0", "NVIDIA H100 80GB HBM3|9.0"]


@pytest.mark.parametrize("tokens", [-5, 0, 10**9])
def test_out_of_range_crossovers_are_refused_on_save(tmp_path: Path, tokens: int) -> None:
    with pytest.raises(ValueError, match="crossover_tokens"):
        save_crossover(MeasuredCrossover("NVIDIA H100 80GB HBM3", (9, 0), tokens), tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_an_entry_under_another_gpus_key_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    other = MeasuredCrossover("NVIDIA A100", (8, 0), 4)
    path.write_text(json.dumps({"schema": SCHEMA, "gpus": {"NVIDIA H100 80GB HBM3|9.0": other.to_dict()}}))
    with pytest.warns(UserWarning, match="describes"):
        assert lookup_crossover(H100, path) is None


def test_a_symlinked_cache_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "shared" / "measured.json"
    real.parent.mkdir()
    link = tmp_path / "m.json"
    link.symlink_to(real)
    save_crossover(MeasuredCrossover("NVIDIA H100 80GB HBM3", (9, 0), 2), link)
    assert link.is_symlink() and len(load_all(real)) == 1


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import awq_kernel_select.measured as measured

    def broken_dump(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(measured, "dumps", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_crossover(MeasuredCrossover("NVIDIA H100 80GB HBM3", (9, 0), 2), tmp_path / "m.json")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_checkpoint_is_benched_beside_its_dense_twin_at_the_sizes_asked(fp16_dir: Path, tmp_path: Path) -> None:
    """`bench --model`: an fp16 baseline of the checkpoint's own (dequantized) weights, and the sizes
    given on the command line are the ones measured, on the CPU too (they were replaced there)."""
    from awq_kernel_select import load_quantized, quantize
    from awq_kernel_select.bench.model import dense_twin
    from awq_kernel_select.cli import main

    ckpt = tmp_path / "q"
    quantize(fp16_dir, ckpt, method="rtn", group_size=32, progress=False)
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(ckpt), "--out", str(out), "--no-save", "--batch-sizes", "1", "3",
                 "--prompt-len", "8", "--new-tokens", "2", "--reps", "2"]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert {r["variant"] for r in data["single"]} == {"fp16", "torch_dequant"}
    assert {int(b) for b in data["sweep"]["torch_dequant"]} == {1, 3}
    assert any("prompt 8 tokens, 2 generated, batch sizes 1, 3, 2 repetitions" in n for n in data["notes"])

    model = load_quantized(ckpt, device="cpu").model
    twin = dense_twin(model)
    assert not any(isinstance(m, AWQLinear) for m in twin.modules())
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = model(ids).logits, twin(ids).logits
    # the same weights; the twin computes in the checkpoint's fp16, the CPU path of the 4-bit model in fp32
    assert float((got - ref).norm() / ref.norm()) < 2e-3


def test_bench_sizes_default_by_device_and_keep_what_is_given() -> None:
    from awq_kernel_select.bench.run import CPU_SIZES, GPU_SIZES, BenchConfig, sizes_for

    assert sizes_for(BenchConfig(), on_gpu=True) == GPU_SIZES and sizes_for(BenchConfig(), on_gpu=False) == CPU_SIZES
    given = sizes_for(BenchConfig(prompt_len=7, batch_sizes=(5,)), on_gpu=False)
    assert (given.prompt_len, given.batch_sizes, given.reps) == (7, (5,), CPU_SIZES.reps)
    small = BenchConfig(shape="smollm2-135m")
    assert sizes_for(small, on_gpu=True).layers == 30 and sizes_for(small, on_gpu=False).layers == CPU_SIZES.layers


@pytest.mark.parametrize("group", [64, 128])
def test_the_tile_sweep_tries_only_tiles_the_kernels_accept(group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--group 64` (SmolLM2's layers) must not leave the quick sweep empty at M = 1, nor offer a
    tile the kernel refuses (the sweep would skip it at run time, on the GPU)."""
    from benchmarks import kernels as kb

    monkeypatch.setattr(kb, "QUICK_SWEEP", True)
    for layout in ("gemv", "gemm"):
        for m in (1, 2, 4, 16, 64):
            configs = kb.sweep_configs(m, group, layout)
            assert configs, (layout, m)
            for cfg in configs:
                cfg.check(layout == "gemv", group)
    assert all(k % 64 == 0 for k, _ in kb.SHAPE_SETS["smollm2"])
    for k, n in kb.SHAPE_SETS["smollm2"]:  # the one-step tiles of short K, at every shape they are swept
        one_step = [c for c in kb.sweep_configs(1, group, "gemv", k) if c.block_k >= 512]
        assert one_step and kb.distinct_at_shape(one_step, "gemv", group, 1, n, k)
    assert not [c for c in kb.sweep_configs(1, group, "gemv", 4096) if c.block_k >= 512]


def test_the_small_model_shapes_run_on_the_cpu_with_their_group(tmp_path: Path) -> None:
    """``--shape smollm2-135m``: SmolLM2-135M's layer shapes (576 wide, group 64), no download."""
    import argparse

    from awq_kernel_select.bench.cli import add_arguments
    from awq_kernel_select.bench.model import EMBEDDED_SHAPES
    from awq_kernel_select.cli import main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    shape_option = next(a for a in parser._actions if a.dest == "shape")
    assert list(shape_option.choices or []) == list(EMBEDDED_SHAPES)
    assert main(["bench", "--shape", "smollm2-135m", "--layers", "1", "--prompt-len", "4", "--new-tokens", "2",
                 "--batch-sizes", "1", "--reps", "1", "--no-save", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.md").read_text().startswith("SmolLM2-135M shapes, 1 layers, random weights, RTN 4-bit group 64")


def test_a_checkpoint_and_an_embedded_shape_are_refused_together(tmp_path: Path) -> None:
    from awq_kernel_select.bench.run import BenchConfig, run_benchmark

    with pytest.raises(ValueError, match="shape='smollm2-135m' is for the embedded model"):
        run_benchmark(BenchConfig(model=tmp_path, shape="smollm2-135m"))
    with pytest.raises(ValueError, match="one of llama2-7b, smollm2-135m"):
        run_benchmark(BenchConfig(shape="llama3"))


def test_the_sweep_times_each_distinct_launch_once() -> None:
    """On K = 576 in tiles of 64 (9 tiles), S16, S32 and S64 all launch 9 splits: one timing."""
    from awq_kernel_select.kernels.matmul import MatmulConfig
    from benchmarks.kernels import distinct_at_shape

    configs = [MatmulConfig(1, 64, 64, s, 4, 3, prefetch=True) for s in (4, 8, 16, 32, 64)]
    assert [c.split_k for c in distinct_at_shape(configs, "gemv", 64, 1, 576, 576)] == [4, 8, 16]
    assert len(distinct_at_shape(configs, "gemv", 64, 1, 4096, 4096)) == 5  # 64 tiles of K: all differ
    assert distinct_at_shape([MatmulConfig(1, 64, 48, 4, 4, 3)], "gemv", 64, 1, 576, 576) == []  # refused
