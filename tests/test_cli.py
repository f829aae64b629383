"""The command line: human and JSON output, errors as one line with exit code 2."""

from __future__ import annotations

import json

import pytest

from awq_kernel_select.cli import main


@pytest.mark.stack
def test_detect_and_select_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect"]) == 0
    assert main(["detect", "--json"]) == 0
    out = capsys.readouterr().out
    assert "source torch" in out
    assert main(["select", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kernel"] and data["reasons"] and "detection" in data


def test_what_if_capability(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--capability", "9.0", "--batch-size", "32", "--checkpoint-version", "gemv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("selected: aks_gemm (layout gemm) for batch 32")
    assert "converted losslessly" in out


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["select", "--capability", "9.0", "--kernel", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no kernel named 'nope'") and "Traceback" not in err
    assert main(["detect", "--device", "7"]) == 2
    assert capsys.readouterr().err.startswith("error: GPU index 7")


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table"]) == 0
    assert "aks_gemv" in capsys.readouterr().out
