"""The policy table and select_kernel(): every capability, both workloads, two software stacks."""

from __future__ import annotations

from typing import Iterator

import pytest

from awq_kernel_select import CC, KernelSpec, OursRunner, PolicyTable, Verdict, register_kernel, select_kernel
from awq_kernel_select.policy import DEFAULT_TABLE, reset_default_table
from awq_kernel_select.probes import Probe, Target, import_probe, torch_has_code_for
from awq_kernel_select.select import NoKernelError, Workload

# torch's CUDA 12.x wheels: cubins for these, PTX for the newest.
TORCH_ARCHES = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def torch_arch(target: Target) -> Verdict:
    if target.device != "cuda" or target.capability is None:
        return Verdict(True, f"torch runs on {target.device}")
    return torch_has_code_for(target.capability, TORCH_ARCHES, "2.6.0+cu126")


OK = Verdict(True, "imports")
LIBCUDART = Verdict(False, "AutoAWQ's CUDA kernels (awq_ext) could not load: ImportError: libcudart.so.12: cannot open shared object file")
MISSING = Verdict(False, "not installed")

#: every AutoAWQ extension loads (CUDA 12 stack, autoawq-kernels installed), Triton works
FULL_STACK: dict[str, Verdict | Probe] = {
    "awq_ext": OK, "awq_v2_ext": OK, "marlin_cuda": OK, "exl_ext": OK, "exlv2_ext": OK,
    "ipex": MISSING, "triton_gpu": OK, "torch_cuda_arch": torch_arch,
}
#: today's stack (torch 2.11 + CUDA 13): awq_ext does not load, Triton works
TODAY_STACK: dict[str, Verdict | Probe] = {
    **FULL_STACK, "awq_ext": LIBCUDART, "awq_v2_ext": LIBCUDART, "marlin_cuda": MISSING,
    "exl_ext": LIBCUDART, "exlv2_ext": LIBCUDART,
}


@pytest.fixture(autouse=True)
def pristine_table() -> Iterator[None]:
    reset_default_table()
    yield
    reset_default_table()


# capability -> (kernel for a single query, kernel for batched serving); None: no kernel at all
EXPECTED_FULL = {
    (3, 7): (None, None),  # Kepler: torch itself has no code for it, AWQ kernels need 7.5
    (5, 2): ("torch_dequant", "torch_dequant"),  # Maxwell: no AWQ kernel supports it (docs/policy.md)
    (6, 1): ("torch_dequant", "torch_dequant"),  # Pascal: likewise
    (7, 0): ("torch_dequant", "torch_dequant"),  # Volta: AutoAWQ needs 7.5, Triton 8.0
    (7, 5): ("autoawq_gemv", "autoawq_gemm"),  # Turing: AutoAWQ's CUDA kernels
    (8, 0): ("aks_gemv", "aks_gemm"),
    (8, 6): ("aks_gemv", "aks_gemm"),
    (8, 9): ("aks_gemv", "aks_gemm"),
    (9, 0): ("aks_gemv", "aks_gemm"),
    (10, 0): ("aks_gemv", "aks_gemm"),  # AutoAWQ's kernels are built up to sm_90, no PTX
    (12, 0): ("aks_gemv", "aks_gemm"),
}

EXPECTED_TODAY = {
    **EXPECTED_FULL,
    (7, 5): ("torch_dequant", "torch_dequant"),  # awq_ext does not load and Triton needs 8.0
}


def expect(cap: tuple[int, int], workload: str, kernel: str | None, probes: dict[str, Verdict | Probe]) -> None:
    if kernel is None:
        with pytest.raises(NoKernelError, match="no code for sm_37") as info:
            select_kernel(cap, workload, probes=probes)
        assert {r.kernel.name for r in info.value.rejected} == {r.name for r in DEFAULT_TABLE}
        return
    selection = select_kernel(cap, workload, probes=probes)
    assert selection.name == kernel, selection.explain()
    assert {r.kernel.name for r in selection.rejected} | {kernel} == {r.name for r in DEFAULT_TABLE}


@pytest.mark.parametrize("cap", list(EXPECTED_FULL))
@pytest.mark.parametrize("workload", ["interactive", "serving"])
def test_full_stack(cap: tuple[int, int], workload: str) -> None:
    single, batched = EXPECTED_FULL[cap]
    expect(cap, workload, single if workload == "interactive" else batched, FULL_STACK)


@pytest.mark.parametrize("cap", list(EXPECTED_TODAY))
@pytest.mark.parametrize("workload", ["interactive", "serving"])
def test_todays_stack(cap: tuple[int, int], workload: str) -> None:
    single, batched = EXPECTED_TODAY[cap]
    expect(cap, workload, single if workload == "interactive" else batched, TODAY_STACK)


def test_h100_today_says_why_awq_ext_was_rejected() -> None:
    selection = select_kernel((9, 0), "interactive", probes=TODAY_STACK)
    assert selection.name == "aks_gemv"
    text = selection.explain()
    assert "autoawq_gemv would also fit but cannot run here" in text
    assert "libcudart.so.12" in text
    rejected = {r.kernel.name: r.reason for r in selection.rejected}
    assert "libcudart.so.12" in rejected["autoawq_gemm"]
    assert "ranks higher" in rejected["autoawq_triton_gemm"]


def test_batch_size_picks_the_regime() -> None:
    assert select_kernel((9, 0), 1, probes=FULL_STACK).name == "aks_gemv"
    assert select_kernel((9, 0), 2, probes=FULL_STACK).name == "aks_gemv"  # measured: docs/kernels.md
    assert select_kernel((9, 0), 3, probes=FULL_STACK).name == "aks_gemv"  # three tokens: fp16 and bf16
    assert select_kernel((9, 0), 4, probes=FULL_STACK).name == "aks_gemm"
    assert select_kernel((7, 5), 2, probes=FULL_STACK).name == "autoawq_gemm"  # GEMV: batch 1 only


def test_checkpoint_version_constrains_and_converts() -> None:
    s = select_kernel((9, 0), "interactive", "gemm", probes=FULL_STACK)
    assert s.name == "aks_gemv" and s.needs_conversion
    assert any("converted losslessly" in r for r in s.reasons)
    # a gemv_fast checkpoint can only run on its own kernel (or nothing)
    s = select_kernel((8, 6), "interactive", "gemv_fast", probes=FULL_STACK)
    assert s.name == "autoawq_gemv_fast" and not s.needs_conversion
    with pytest.raises(NoKernelError, match="cannot be converted"):
        select_kernel((8, 6), "interactive", "gemv_fast", probes=TODAY_STACK)


def test_marlin_needs_symmetric_checkpoints() -> None:
    s = select_kernel((8, 0), "serving", "marlin", zero_point=False, probes=FULL_STACK)
    assert s.name == "autoawq_marlin"
    with pytest.raises(NoKernelError, match="needs zero_point=False"):
        select_kernel((8, 0), "serving", "marlin", zero_point=True, probes=FULL_STACK)


def test_rocm_and_cpu() -> None:
    rocm = select_kernel(workload="serving", device="rocm", probes=FULL_STACK)
    assert rocm.name == "autoawq_triton_gemm" and rocm.target.device == "rocm"
    cpu = select_kernel(workload="interactive", device="cpu", probes=FULL_STACK)
    assert cpu.name == "torch_dequant"
    with_ipex = select_kernel(workload="interactive", device="cpu", probes={**FULL_STACK, "ipex": OK})
    assert with_ipex.name == "autoawq_ipex"


def test_a_user_registered_rule_wins() -> None:
    register_kernel(
        KernelSpec(name="my_gemv", layout="gemv", min_capability=CC(8, 0), tokens=(1, 4),
                   priority=500, requires=("my_ext",), runner=OursRunner(), source="my benchmarks")
    )
    probes = {**FULL_STACK, "my_ext": OK}
    assert select_kernel((8, 9), "interactive", probes=probes).name == "my_gemv"
    assert select_kernel((8, 9), "serving", probes=probes).name == "aks_gemm"  # outside its range
    reset_default_table()
    assert "my_gemv" not in DEFAULT_TABLE


def test_a_row_without_a_runner_is_refused_with_what_to_add() -> None:
    row = KernelSpec(name="no_runner", layout="gemv", priority=500, source="test")
    with pytest.raises(ValueError, match=r"'no_runner' has no runner.*runner=OursRunner\(\).*LoadRequest"):
        register_kernel(row)
    with pytest.raises(ValueError, match="has no runner"):
        DEFAULT_TABLE.copy().register(row)
    assert "no_runner" not in DEFAULT_TABLE
    with pytest.raises(ValueError, match="layout='gemx'; known layouts"):
        KernelSpec(name="typo", layout="gemx", source="test")  # type: ignore[arg-type]


def test_every_shipped_row_says_what_runs_it() -> None:
    assert all(callable(row.runner) for row in DEFAULT_TABLE)


def test_an_extension_that_fails_to_import_is_rejected_with_its_message() -> None:
    table = DEFAULT_TABLE.copy()
    table.register(KernelSpec(name="broken", layout="gemm", priority=999, requires=("broken_ext",), source="test",
                              runner=OursRunner()))
    probes = {**FULL_STACK, "broken_ext": import_probe("json.this_module_does_not_exist", "the broken extension")}
    s = select_kernel((9, 0), "serving", table=table, probes=probes)
    assert s.name == "aks_gemm"
    reason = {r.kernel.name: r.reason for r in s.rejected}["broken"]
    assert "the broken extension" in reason and "ModuleNotFoundError" in reason and "this_module_does_not_exist" in reason


def test_a_table_object_with_overrides() -> None:
    table = DEFAULT_TABLE.with_overrides("aks_gemv", priority=-1)
    assert select_kernel((9, 0), "interactive", table=table, probes=FULL_STACK).name == "aks_gemm"
    assert DEFAULT_TABLE["aks_gemv"].priority == 100  # the default table is untouched
    with pytest.raises(ValueError, match="already in the table"):
        table.register(table["aks_gemm"], replace_existing=False)


def test_a_measured_crossover_moves_the_regimes(tmp_path, monkeypatch) -> None:
    from awq_kernel_select.measured import MeasuredCrossover, save_crossover
    from awq_kernel_select.probes import Target

    monkeypatch.setenv("AWQ_KERNEL_SELECT_CACHE", str(tmp_path / "m.json"))
    save_crossover(MeasuredCrossover("NVIDIA H100 80GB HBM3", (9, 0), crossover_tokens=8))
    from awq_kernel_select.detect import Detection, GpuInfo

    h100 = Detection((GpuInfo(0, "NVIDIA H100 80GB HBM3", "cuda", "torch", CC(9, 0)),), "torch")
    s = select_kernel(workload=4, detection=h100, probes=FULL_STACK)
    assert s.name == "aks_gemv" and any("crossover measured on this GPU" in r for r in s.reasons)
    assert select_kernel(workload=8, detection=h100, probes=FULL_STACK).name == "aks_gemm"
    assert select_kernel(workload=4, detection=h100, probes=FULL_STACK, use_measured=False).name == "aks_gemm"
    other = Detection((GpuInfo(0, "NVIDIA A100", "cuda", "torch", CC(8, 0)),), "torch")
    assert select_kernel(workload=4, detection=other, probes=FULL_STACK).name == "aks_gemm"  # not this GPU's


@pytest.mark.parametrize("gpus", [[], None, {"NVIDIA H100 80GB HBM3|9.0": None}])
def test_a_malformed_measured_cache_warns_and_selection_goes_on(tmp_path, monkeypatch, gpus) -> None:
    import json

    from awq_kernel_select.detect import Detection, GpuInfo

    cache = tmp_path / "m.json"
    cache.write_text(json.dumps({"schema": 1, "gpus": gpus}))
    monkeypatch.setenv("AWQ_KERNEL_SELECT_CACHE", str(cache))
    h100 = Detection((GpuInfo(0, "NVIDIA H100 80GB HBM3", "cuda", "torch", CC(9, 0)),), "torch")
    with pytest.warns(UserWarning, match=f"ignoring unreadable measured-results cache {cache}"):
        assert select_kernel(workload=1, detection=h100, probes=FULL_STACK).name == "aks_gemv"


def test_force_is_checked_and_names_what_it_passed_over() -> None:
    s = select_kernel((9, 0), "interactive", force="torch_dequant", probes=TODAY_STACK)
    assert s.name == "torch_dequant"
    assert any("aks_gemv (priority 100) also fits and was passed over" in r for r in s.reasons)
    with pytest.raises(NoKernelError, match="libcudart"):
        select_kernel((9, 0), "interactive", force="autoawq_gemv", probes=TODAY_STACK)
    with pytest.raises(KeyError, match="no kernel named"):
        select_kernel((9, 0), force="nope", probes=TODAY_STACK)


def test_untested_capability_is_said() -> None:
    s = select_kernel((12, 0), "interactive", probes=FULL_STACK)
    assert any("tested aks_gemv on compute capability 9.0 only" in r for r in s.reasons)


def test_workload_parsing() -> None:
    assert Workload.parse("serving").tokens_per_forward == 64
    assert Workload.parse(8).tokens_per_forward == 8
    with pytest.raises(ValueError, match="unknown workload"):
        Workload.parse("batch")
    with pytest.raises(ValueError):
        Workload.parse(0)
    with pytest.raises(ValueError, match="unknown AWQ checkpoint version"):
        select_kernel((9, 0), checkpoint_version="gptq", probes=FULL_STACK)


def test_torch_arch_rules() -> None:
    assert torch_has_code_for(CC(8, 6), ["sm_80"], "x")  # same major, newer minor
    assert not torch_has_code_for(CC(7, 0), ["sm_75"], "x")  # older minor
    assert not torch_has_code_for(CC(9, 0), ["sm_90a"], "x")  # arch-specific cubins do not count
    assert torch_has_code_for(CC(12, 0), ["sm_90", "compute_90"], "x")  # PTX JIT
    assert "CPU-only" in torch_has_code_for(CC(9, 0), [], "x").reason


def test_table_prints_every_row_with_its_source() -> None:
    text = str(DEFAULT_TABLE)
    for row in DEFAULT_TABLE:
        assert row.name in text and row.source in text


def test_selection_to_dict_is_json_ready() -> None:
    import json

    data = select_kernel((9, 0), "interactive", "gemm", probes=TODAY_STACK).to_dict()
    assert json.loads(json.dumps(data))["kernel"] == "aks_gemv"
    assert data["needs_conversion"] is True and data["target"]["capability"] == [9, 0]


def test_empty_table() -> None:
    with pytest.raises(NoKernelError):
        select_kernel((9, 0), table=PolicyTable([]), probes=FULL_STACK)
