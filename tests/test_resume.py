"""quantize(method="awq") keeps each finished block: a run stopped after two blocks resumes at the
third and writes the same checkpoint, bit for bit, as a run that was never stopped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from awq_kernel_select import resume
from awq_kernel_select.quantize import quantize

import tiny

FAST = dict(group_size=64, max_calib_samples=8, max_calib_seq_len=64)


class Killed(BaseException):
    """Stands for SIGKILL right after a block was saved (BaseException: nothing catches it)."""


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_run_stopped_after_two_blocks_resumes_at_the_third(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    model = tiny.save_tiny(tmp_path / "fp16", layers=4)
    quantize(model, tmp_path / "whole", **FAST)  # type: ignore[arg-type]
    saved: list[int] = []
    real_save = resume.save_block

    def save_then_die(folder: Path, key: str, index: int, block: torch.nn.Module, inputs: torch.Tensor) -> None:
        real_save(folder, key, index, block, inputs)
        saved.append(index)
        if index == 1:
            raise Killed

    monkeypatch.setattr(resume, "save_block", save_then_die)
    with pytest.raises(Killed):
        quantize(model, tmp_path / "out", **FAST)  # type: ignore[arg-type]
    assert saved == [0, 1] and not (tmp_path / "out").exists()
    assert (resume.resume_folder(tmp_path / "out") / "block-1.pt").is_file()

    saved.clear()
    with caplog.at_level(logging.WARNING, logger="awq_kernel_select"):
        quantize(model, tmp_path / "out", **FAST)  # type: ignore[arg-type]
    assert saved == [2, 3]  # blocks 1 and 2 were not quantized again
    assert "resuming: blocks 1-2 of 4" in caplog.text and "from block 3" in caplog.text
    whole, resumed = tensors(tmp_path / "whole"), tensors(tmp_path / "out")
    assert sorted(whole) == sorted(resumed) and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not resume.resume_folder(tmp_path / "out").exists()  # gone once the checkpoint is written


def test_saved_blocks_of_other_settings_are_discarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    model = tiny.save_tiny(tmp_path / "fp16", layers=3)
    real_save = resume.save_block

    def save_then_die(folder: Path, key: str, index: int, block: torch.nn.Module, inputs: torch.Tensor) -> None:
        real_save(folder, key, index, block, inputs)
        raise Killed

    monkeypatch.setattr(resume, "save_block", save_then_die)
    with pytest.raises(Killed):
        quantize(model, tmp_path / "out", **FAST)  # type: ignore[arg-type]
    monkeypatch.setattr(resume, "save_block", real_save)
    with caplog.at_level(logging.WARNING, logger="awq_kernel_select"):
        quantize(model, tmp_path / "out", **{**FAST, "group_size": 32})  # type: ignore[arg-type]
    assert "discarding" in caplog.text and "resuming" not in caplog.text


def test_a_quantization_that_cannot_fit_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    import sys

    from awq_kernel_select.memory import MemoryPlanError

    q = sys.modules["awq_kernel_select.quantize"]  # the module (the package's attribute is the function)

    model = tiny.save_tiny(tmp_path / "fp16", layers=2)
    monkeypatch.setattr(q, "prepare_calibration", lambda *a, **k: pytest.fail("calibration started"))
    with pytest.raises(MemoryPlanError, match=r"cpu: needs ~.* GiB \(the whole model \+ largest block .*has 0\.00 GiB"):
        quantize(model, tmp_path / "out", max_memory={"cpu": "1KiB"}, **FAST)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="awq_kernel_select"):
        quantize(model, tmp_path / "out", max_memory={"cpu": "4GiB"}, **FAST)  # type: ignore[arg-type]
    assert "memory plan (peak per device, estimated)" in caplog.text
