"""The engine table (engines.py): one test per row, the export it asks for, and the refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from awq_kernel_select import engine_choice, engine_choice_for, select_kernel
from awq_kernel_select.engines import ENGINE_ROWS, NoEngineRowError
from awq_kernel_select.export import export
from awq_kernel_select.quantize import quantize

import tiny

CASES = {
    # row name: (engine, checkpoint format, capability, group size, zero point, export needed)
    "auto_awq -> Machete": ("vllm", "autoawq-gemm", (9, 0), 128, True, None),
    "auto_awq -> Marlin": ("vllm", "autoawq-gemv", (8, 6), 32, True, "autoawq-gemm"),
    "auto_awq -> Triton AWQ GEMM": ("vllm", "autoawq-gemm", (9, 0), 128, False, None),
    "compressed-tensors WNA16 -> Machete": ("vllm", "compressed-tensors", (9, 0), 64, True, None),
    "compressed-tensors WNA16 -> Marlin": ("vllm", "compressed-tensors", (8, 0), 32, False, None),
    "compressed-tensors (decompressed to dense weights)": ("transformers", "compressed-tensors", None, 128, False,
                                                           None),
    "AutoAWQ through gptqmodel": ("transformers", "compressed-tensors", (9, 0), 128, True, "autoawq-gemm"),
}


def test_every_row_has_a_case() -> None:
    assert sorted(CASES) == sorted(r.name for r in ENGINE_ROWS)


@pytest.mark.parametrize("row", sorted(CASES))
def test_each_row_is_chosen_where_it_fits_and_says_what_to_export(row: str) -> None:
    engine, fmt, cap, g, zp, export_to = CASES[row]
    choice = engine_choice(engine, fmt, capability=cap, group_size=g, zero_point=zp)  # type: ignore[arg-type]
    assert choice.row.name == row and choice.export_to == export_to
    assert choice.row.source and (export_to is None or any("export" in r for r in choice.reasons))


def test_machete_is_hopper_only_and_the_losers_say_why() -> None:
    choice = engine_choice("vllm", "autoawq-gemm", capability=(8, 9), group_size=128)
    assert choice.row.name == "auto_awq -> Marlin"
    assert ("auto_awq -> Machete", "needs compute capability 9.0, GPU has 8.9") in choice.rejected


def test_no_row_is_an_error_that_lists_every_reason() -> None:
    with pytest.raises(NoEngineRowError, match=r"(?s)compute capability 7\.0.*Marlin: needs compute capability >= 7\.5"):
        engine_choice("vllm", "autoawq-gemm", capability=(7, 0))
    with pytest.raises(ValueError, match="engine='tgi'"):
        engine_choice("tgi", "autoawq-gemm", capability=(9, 0))  # type: ignore[arg-type]


def test_a_gemv_checkpoint_is_told_to_export_for_vllm(fp16_dir: Path, tmp_path: Path) -> None:
    quantize(fp16_dir, tmp_path / "gemv", method="rtn", version="gemv", group_size=64)
    choice = engine_choice_for(tmp_path / "gemv", "vllm", (9, 0))
    assert choice.checkpoint_format == "autoawq-gemv" and choice.export_to == "autoawq-gemm"
    assert choice.row.name == "auto_awq -> Machete"
    export(tmp_path / "gemv", tmp_path / "ct", progress=False)
    assert engine_choice_for(tmp_path / "ct", "vllm", (9, 0)).export_to is None


def test_a_selection_says_what_an_engine_would_run_on_its_gpu() -> None:
    selection = select_kernel((9, 0), "interactive", checkpoint_version="gemv", probes=tiny.ALL_PROBES_OK)
    choice = selection.for_engine("vllm")
    assert choice.row.name == "auto_awq -> Machete" and choice.export_to == "autoawq-gemm"
    assert select_kernel(device="cpu").for_engine("transformers", zero_point=False).row.cpu
