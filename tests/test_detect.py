"""Detection: sources in order, recorded nvidia-smi outputs, CUDA_VISIBLE_DEVICES, no GPU."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from awq_kernel_select import detect
from awq_kernel_select.detect import (
    ComputeCapability,
    DeviceIndexError,
    GpuInfo,
    SourceError,
    SourceUnavailable,
    apply_visible_devices,
    detect_compute_capability,
    nvidia_smi_source,
    parse_nvidia_smi_csv,
)

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, csv_file: str | None, code: int = 0, listing: str | None = None) -> None:
    """Put an ``nvidia-smi`` script on PATH that prints a recorded output."""
    script = tmp_path / "nvidia-smi"
    body = "#!/bin/sh\n"
    if listing is not None:
        body += f'if [ "$1" = "-L" ]; then /bin/cat {DATA / listing}; exit 0; fi\n'
    if csv_file is not None:
        body += f"/bin/cat {DATA / csv_file}\n"
    body += f"exit {code}\n"
    script.write_text(body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))


def unavailable(reason: str) -> detect.Source:
    def source(visible: str | None) -> list[GpuInfo]:
        raise SourceUnavailable(reason)

    return source


# --- compute capability --------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("8.6", (8, 6)), ("9.0", (9, 0)), ("12.0", (12, 0)), ("75", (7, 5)), (" 10.0 ", (10, 0))])
def test_capability_parse(text: str, expected: tuple[int, int]) -> None:
    cap = ComputeCapability.parse(text)
    assert cap == expected and cap.to_int() == expected[0] * 10 + expected[1]


@pytest.mark.parametrize("text", ["", "nine", "8.x", "[N/A]", "7"])
def test_capability_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        ComputeCapability.parse(text)


def test_capabilities_compare_as_tuples() -> None:
    assert ComputeCapability(7, 5) < (8, 0) < ComputeCapability(12, 0)
    assert str(ComputeCapability(8, 9)) == "8.9"


# --- nvidia-smi recorded outputs -------------------------------------------------------------


def test_smi_two_gpus() -> None:
    physical = parse_nvidia_smi_csv(read("smi_two_gpus.csv"))
    gpus = apply_visible_devices(physical, None)
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]
    assert [g.capability for g in gpus] == [(9, 0), (8, 0)]
    assert gpus[0].total_memory_bytes == 81559 * 2**20
    assert gpus[0].driver_version == "580.159.04" and gpus[0].source == "nvidia-smi"
    assert gpus[1].arch == "sm_80"


def test_smi_na_fields_become_none() -> None:
    (gpu,) = apply_visible_devices(parse_nvidia_smi_csv(read("smi_na_fields.csv")), None)
    assert gpu.capability == (8, 9)
    assert gpu.total_memory_bytes is None and gpu.driver_version is None


def test_smi_missing_compute_cap_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="no compute_cap"):
        parse_nvidia_smi_csv(read("smi_no_compute_cap.csv"))


@pytest.mark.parametrize("name", ["smi_garbage.txt", "smi_empty.txt"])
def test_smi_garbage_and_empty_are_source_errors(name: str) -> None:
    with pytest.raises(SourceError):
        parse_nvidia_smi_csv(read(name))


def test_smi_binary_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="not on PATH"):
        nvidia_smi_source(None)


def test_smi_nonzero_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "smi_garbage.txt", code=9)
    with pytest.raises(SourceUnavailable, match="exited with 9: Failed to initialize NVML"):
        nvidia_smi_source(None)


def test_smi_through_the_real_subprocess_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "smi_two_gpus.csv")
    gpus = nvidia_smi_source("1")
    assert [(g.index, g.physical_index, g.name) for g in gpus] == [(0, 1, "NVIDIA A100-SXM4-40GB")]


def test_smi_mig_ids_map_to_their_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "smi_mig.csv", listing="smi_mig_listing.txt")
    (gpu,) = nvidia_smi_source("MIG-22222222-aaaa-bbbb-cccc-000000000002")
    assert gpu.mig and gpu.capability == (8, 0) and gpu.index == 0
    assert gpu.uuid == "MIG-22222222-aaaa-bbbb-cccc-000000000002"
    assert nvidia_smi_source("MIG-99999999") == []


# --- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "visible,expected_physical",
    [
        (None, [0, 1]),
        ("", []),
        ("1", [1]),
        ("1,0", [1, 0]),
        (" 0 , 1 ", [0, 1]),
        ("0,-1,1", [0]),  # CUDA stops at the first invalid entry
        ("5", []),
        ("GPU-9a8b", [1]),  # a unique UUID prefix
        ("GPU-5b3e4f0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", [0]),
        ("9a8b7c6d", [1]),  # UUID without the GPU- prefix
        ("GPU-", []),  # ambiguous prefix: CUDA stops
    ],
)
def test_visible_devices(visible: str | None, expected_physical: list[int]) -> None:
    gpus = apply_visible_devices(parse_nvidia_smi_csv(read("smi_two_gpus.csv")), visible)
    assert [g.physical_index for g in gpus] == expected_physical
    assert [g.index for g in gpus] == list(range(len(expected_physical)))


# --- the layered detection ------------------------------------------------------------------


def test_no_gpu_is_a_normal_answer() -> None:
    sources = {"torch": unavailable("CPU build"), "nvml": unavailable("no lib"), "nvidia-smi": unavailable("no binary")}
    detection = detect_compute_capability(sources=sources, environ={})  # type: ignore[arg-type]
    assert not detection and detection.primary is None and detection.source is None
    assert [s for s, _ in detection.attempts] == ["torch", "nvml", "nvidia-smi"]
    assert "No GPU visible" in detection.summary()


def test_falls_through_to_nvidia_smi_and_respects_visibility(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "smi_two_gpus.csv")
    sources = {"torch": unavailable("CPU build"), "nvml": unavailable("no lib"), "nvidia-smi": nvidia_smi_source}
    detection = detect_compute_capability(sources=sources, environ={"CUDA_VISIBLE_DEVICES": "1"})  # type: ignore[arg-type]
    assert detection.source == "nvidia-smi"
    assert detection.primary is not None and detection.primary.capability == (8, 0)
    assert detection.cuda_visible_devices == "1"


def test_garbage_source_is_recorded_and_skipped() -> None:
    def broken(visible: str | None) -> list[GpuInfo]:
        raise SourceError("row not understood")

    def good(visible: str | None) -> list[GpuInfo]:
        return [GpuInfo(0, "NVIDIA L4", "cuda", "nvidia-smi", ComputeCapability(8, 9))]

    detection = detect_compute_capability(sources={"nvml": broken, "nvidia-smi": good}, environ={})  # type: ignore[dict-item]
    assert detection.source == "nvidia-smi"
    assert detection.attempts[0] == ("nvml", "error: row not understood")


def test_first_answering_source_wins() -> None:
    def torch_like(visible: str | None) -> list[GpuInfo]:
        return [GpuInfo(0, "NVIDIA H100", "cuda", "torch", ComputeCapability(9, 0))]

    def never(visible: str | None) -> list[GpuInfo]:
        raise AssertionError("must not be asked")

    detection = detect_compute_capability(sources={"torch": torch_like, "nvml": never}, environ={})  # type: ignore[dict-item]
    assert detection.source == "torch" and len(detection.attempts) == 1


def test_rocm_reports_gfx_arch() -> None:
    def rocm(visible: str | None) -> list[GpuInfo]:
        return [GpuInfo(0, "AMD Instinct MI250X", "rocm", "torch", None, "gfx90a", runtime_version="6.2")]

    detection = detect_compute_capability(sources={"torch": rocm}, environ={})  # type: ignore[dict-item]
    assert detection.primary is not None and detection.primary.arch == "gfx90a"
    assert "arch gfx90a" in detection.summary() and "HIP 6.2" in detection.summary()


def test_device_index() -> None:
    def two(visible: str | None) -> list[GpuInfo]:
        return [
            GpuInfo(0, "A", "cuda", "torch", ComputeCapability(8, 0)),
            GpuInfo(1, "B", "cuda", "torch", ComputeCapability(9, 0)),
        ]

    detection = detect_compute_capability(1, sources={"torch": two}, environ={})  # type: ignore[dict-item]
    assert [g.name for g in detection.gpus] == ["B"]
    with pytest.raises(DeviceIndexError, match="use an index below 2"):
        detect_compute_capability(2, sources={"torch": two}, environ={})  # type: ignore[dict-item]
    with pytest.raises(DeviceIndexError, match="no GPU is visible"):
        detect_compute_capability(0, sources={"torch": unavailable("x")}, environ={})  # type: ignore[dict-item]


def test_default_sources_on_this_machine_do_not_crash() -> None:
    detection = detect_compute_capability()
    assert len(detection.attempts) >= 1
    assert detection.cuda_visible_devices == os.environ.get("CUDA_VISIBLE_DEVICES")
