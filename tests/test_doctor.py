"""``awq-kernel-select doctor``: the report on this machine, and known failures recognised in the
texts they were recorded with."""

from __future__ import annotations

import json

import pytest

from awq_kernel_select.detect import Detection
from awq_kernel_select.doctor import diagnose, doctor
from awq_kernel_select.probes import PROBES, Verdict, check, register_probe

#: failure texts as they were printed (paths shortened), and the fix each must lead to
RECORDED = [
    ("ImportError: libcudart.so.12: cannot open shared object file: No such file or directory", "CUDA 12"),
    ("ImportError: /usr/lib/python3.12/site-packages/awq_ext.cpython-312-x86_64-linux-gnu.so: undefined symbol: "
     "_ZN3c1017RegisterOperatorsD1Ev", "built for another torch"),
    ("ptxas /tmp/tmpk2x3/kernel.ptx, line 412; error   : Instruction 'mma' with .bf16 requires .target sm_80 or "
     "higher\n  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "8.0"),
    ("ImportError: cannot import name 'PytorchGELUTanh' from 'transformers.activations' "
     "(/usr/lib/python3.12/site-packages/transformers/activations.py)", "4.57"),
    ("ModuleNotFoundError: No module named 'transformers.models.qwen3'", "4.51"),
]


@pytest.mark.parametrize("text,meaning", RECORDED, ids=["cuda13", "c10", "sm75", "gelu", "old-transformers"])
def test_recorded_failures_are_recognised(text: str, meaning: str) -> None:
    found = diagnose(text)
    assert len(found) == 1 and meaning in found[0].meaning and found[0].fix and found[0].source


def test_unrelated_text_matches_nothing() -> None:
    assert diagnose("ModuleNotFoundError: No module named 'awq_ext'") == []


def test_a_failing_probe_comes_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROBES, "awq_ext", PROBES["awq_ext"])  # put the real one back afterwards
    register_probe("awq_ext", lambda target: Verdict(False, f"AutoAWQ's CUDA kernels (awq_ext) could not load: "
                                                            f"{RECORDED[0][0]}"))
    try:
        report = doctor(Detection((), None))
    finally:
        check.cache_clear()  # the recorded verdict must not outlive the test
    awq_ext = next(p for p in report.probes if p.requirement == "awq_ext")
    assert not awq_ext.ok and "CUDA 12" in awq_ext.known[0].meaning
    assert "fix:" in report.format() and "AutoAWQ_kernels" in report.format()


def test_a_hiding_cuda_visible_devices_is_said() -> None:
    report = doctor(Detection((), None, cuda_visible_devices=""))
    assert any("CUDA_VISIBLE_DEVICES=''" in note for note in report.notes)
    assert doctor(Detection((), None)).notes == ()


def test_doctor_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    from awq_kernel_select.cli import main

    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["torch"] and data["versions"]["transformers"] and data["selection"]
    assert {p["requirement"] for p in data["probes"]} >= {"awq_ext", "triton_gpu", "torch_cuda_arch"}
    assert main(["doctor"]) == 0
    assert "requirements (what policy rows need):" in capsys.readouterr().out
