"""Bad input gets a clear error that names the file, field or option, before any long work; nothing
is written half-way, and nothing of a user's is lost. One test per defect found by probing the
library as a demanding user would."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from awq_kernel_select.calibration import CalibrationError, prepare_calibration
from awq_kernel_select.checkpoint import CheckpointError
from awq_kernel_select.load import load_quantized
from awq_kernel_select.atomic import OWNER_FILE
from awq_kernel_select.quantize import QuantizeError, quantize

import tiny

RTN = dict(method="rtn", group_size=64)


@pytest.fixture(scope="module")
def ckpt(fp16_dir: Path) -> Path:
    out = fp16_dir.parent / "q-rtn"
    quantize(fp16_dir, out, **RTN)  # type: ignore[arg-type]
    return out


# --- quantize: refused before any model work -------------------------------------------------------


def test_an_unwritable_output_fails_fast(fp16_dir: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(QuantizeError, match=r"cannot write the checkpoint next to /proc/self/aks-out"):
        quantize(fp16_dir, "/proc/self/aks-out", **RTN)  # type: ignore[arg-type]
    assert time.perf_counter() - started < 5


def test_an_output_that_is_a_file_is_named(fp16_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(QuantizeError, match=r"output_dir .*out is a file"):
        quantize(fp16_dir, tmp_path / "out", **RTN)  # type: ignore[arg-type]


def test_awq_with_one_group_per_row_is_refused_with_the_sizes_that_work(fp16_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match=r"group_size=-1 .*method='awq'.*\[32, 64\].*method='rtn'"):
        quantize(fp16_dir, tmp_path / "out", group_size=-1)
    assert not (tmp_path / "out").exists()


def test_stale_partial_folders_of_ours_are_cleaned_and_logged(fp16_dir: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = tmp_path / ".out.partial-killed"
    ours.mkdir()
    (ours / OWNER_FILE).write_text(f"{dead.pid} {os.uname().nodename}\n")
    (ours / "model.safetensors").write_bytes(b"half a file")
    not_ours = tmp_path / ".out.partial-someone-else"
    not_ours.mkdir()
    with caplog.at_level(logging.WARNING, logger="awq_kernel_select.quantize"):
        quantize(fp16_dir, tmp_path / "out", **RTN)  # type: ignore[arg-type]
    assert not ours.exists() and not_ours.exists()
    assert any("interrupted write" in r.getMessage() and str(ours) in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out" / OWNER_FILE).exists()


def test_the_checkpoint_folder_follows_the_umask(fp16_dir: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        quantize(fp16_dir, tmp_path / "out", **RTN)  # type: ignore[arg-type]
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_a_calibration_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "calib.txt"
    bad.write_bytes("caf\u00e9 ".encode("latin-1") * 50)
    with pytest.raises(CalibrationError, match=r"calib.txt is not UTF-8 text \(byte 3"):
        prepare_calibration(bad, tiny.make_tokenizer(), max_samples=2, seq_len=8)


# --- load_quantized: a damaged or inconsistent checkpoint is named ---------------------------------


def test_a_truncated_weights_file_is_named(ckpt: Path, tmp_path: Path) -> None:
    copy = tiny.copy_checkpoint(ckpt, tmp_path / "c")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors cannot be read as safetensors .*truncated"):
        load_quantized(copy, device="cpu")


def _rewrite_tensors(copy: Path, edit: object) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(copy / "model.safetensors"))
    edit(tensors)  # type: ignore[operator]
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})


def test_a_missing_tensor_is_named(ckpt: Path, tmp_path: Path) -> None:
    copy = tiny.copy_checkpoint(ckpt, tmp_path / "c")
    _rewrite_tensors(copy, lambda t: t.pop("model.layers.1.mlp.up_proj.qweight"))
    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.up_proj.qweight missing from model.safetensors"):
        load_quantized(copy, device="cpu")


def test_a_float_qweight_is_refused_at_load_not_at_the_first_forward(ckpt: Path, tmp_path: Path) -> None:
    copy = tiny.copy_checkpoint(ckpt, tmp_path / "c")
    key = "model.layers.0.self_attn.q_proj.qweight"

    def to_float(t: dict[str, torch.Tensor]) -> None:
        t[key] = t[key].float()

    _rewrite_tensors(copy, to_float)
    with pytest.raises(CheckpointError, match=rf"{key} is F32; AutoAWQ checkpoints hold I32"):
        load_quantized(copy, device="cpu")


def _edit_quant_config(ckpt: Path, folder: Path, **changes: object) -> Path:
    return tiny.copy_checkpoint(ckpt, folder, lambda config, _: config["quantization_config"].update(changes))


def test_a_group_size_larger_than_a_layer_names_the_config(ckpt: Path, tmp_path: Path) -> None:
    copy = _edit_quant_config(ckpt, tmp_path / "c", group_size=4096)
    with pytest.raises(CheckpointError, match=r"config.json: quantization_config.group_size=4096 is larger than"):
        load_quantized(copy, device="cpu")


@pytest.mark.parametrize("value", ["false", "true", 0, None])
def test_zero_point_must_be_a_json_boolean(ckpt: Path, tmp_path: Path, value: object) -> None:
    copy = _edit_quant_config(ckpt, tmp_path / "c", zero_point=value)
    with pytest.raises(CheckpointError, match=r"zero_point is .*write true or false"):
        load_quantized(copy, device="cpu")


# --- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-1.5", "8.x", ""])
def test_a_bad_capability_names_the_option(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from awq_kernel_select.cli import main

    assert main(["select", "--capability", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --capability") and "MAJOR.MINOR" in err and len(err.splitlines()) == 1


def test_a_what_if_capability_runs_no_gpu_detection(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from awq_kernel_select import cli

    def no_detection(*args: object, **kwargs: object) -> None:
        raise AssertionError("detection ran for a what-if")

    monkeypatch.setattr(cli, "detect_compute_capability", no_detection)
    assert cli.main(["select", "--capability", "8.6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kernel"]


# --- verify=True: a wrong kernel is caught at load ---------------------------------------------------


def test_verify_checks_each_distinct_layer_once(ckpt: Path) -> None:
    from awq_kernel_select.modules import AWQLinear

    wrapper = load_quantized(ckpt, device="cpu", verify=True)
    checks = wrapper.awq_verify
    assert {c.tokens for c in checks} == {1, 16} and all(c.rel_error < c.bound for c in checks)
    kinds = {(m.in_features, m.out_features) for m in wrapper.model.modules() if isinstance(m, AWQLinear)}
    assert len(checks) == 2 * len(kinds) < 2 * sum(isinstance(m, AWQLinear) for m in wrapper.model.modules())


def test_verify_catches_a_wrong_kernel(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from awq_kernel_select.modules import AWQLinear
    from awq_kernel_select.verify import VerifyError

    right = AWQLinear.forward

    def off_by_one_percent(self: AWQLinear, x: torch.Tensor, epilogue: str = "none") -> torch.Tensor:
        return right(self, x, epilogue) * 1.01  # type: ignore[arg-type]

    monkeypatch.setattr(AWQLinear, "forward", off_by_one_percent)
    with pytest.raises(VerifyError, match=r"model.layers.0.self_attn.q_proj: aks_gemm:torch gives relative error "
                                          r"(9.9|1.0)\de-0[23] .*bound 2e-03"):
        load_quantized(ckpt, device="cpu", verify=True)
    monkeypatch.setattr(AWQLinear, "forward", right)
    load_quantized(ckpt, device="cpu", verify=True)  # and the right one passes
