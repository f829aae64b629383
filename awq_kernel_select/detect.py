"""What GPUs are here, and what compute capability do they have?

Three sources are asked in order, and the first one that answers wins:

1. ``torch.cuda`` (also answers for ROCm builds of torch, with the gfx arch),
2. NVML through ``nvidia-ml-py`` (works without initialising CUDA),
3. ``nvidia-smi --query-gpu=...`` parsed as CSV.

Each source is a plain function ``(visible) -> list[GpuInfo]`` held in :data:`SOURCES`, so tests
(and users on odd machines) can swap them. A source that cannot answer raises
:class:`SourceUnavailable` (the reason is kept in :attr:`Detection.attempts`); a source that
answers with garbage raises :class:`SourceError`, which is also recorded and never reaches the
user as a traceback. No GPU at all is a normal answer: an empty :class:`Detection`.

NVML and nvidia-smi number the *physical* GPUs and ignore ``CUDA_VISIBLE_DEVICES``; the mapping
from visible (logical) to physical GPUs is done here, as the CUDA runtime does it: a list of
indices, ``GPU-<uuid>`` prefixes or ``MIG-...`` ids, cut at the first entry that matches nothing.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, NamedTuple, Sequence

Backend = Literal["cuda", "rocm", "none"]
SourceName = Literal["torch", "nvml", "nvidia-smi"]


class ComputeCapability(NamedTuple):
    """A CUDA compute capability, compared as a tuple: ``ComputeCapability(8, 0) < (9, 0)``."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_int(self) -> int:
        """``(9, 0) -> 90``, the form vLLM and nvcc use (``sm_90``)."""
        return self.major * 10 + self.minor

    @classmethod
    def parse(cls, text: str) -> ComputeCapability:
        """Parse ``"8.6"`` (nvidia-smi's ``compute_cap``) or ``"86"``; raise ``ValueError`` else."""
        text = text.strip()
        if "." in text:
            major, _, minor = text.partition(".")
        elif text.isdigit() and len(text) >= 2:
            major, minor = text[:-1], text[-1]
        else:
            raise ValueError(f"not a compute capability: {text!r}")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError(f"not a compute capability: {text!r}")
        return cls(int(major), int(minor))


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU. ``index`` is the logical index (what ``cuda:N`` means in this process)."""

    index: int
    name: str
    backend: Backend
    source: SourceName
    capability: ComputeCapability | None = None  # None on ROCm, where ``arch`` says it
    arch: str | None = None  # "sm_90" on CUDA, "gfx90a" on ROCm
    total_memory_bytes: int | None = None
    uuid: str | None = None
    physical_index: int | None = None
    driver_version: str | None = None
    runtime_version: str | None = None  # CUDA or HIP runtime that torch was built with
    mig: bool = False
    multiprocessors: int | None = None  # SMs (CUDA) or CUs (ROCm); only torch reports it


@dataclass(frozen=True)
class Detection:
    """The answer of :func:`detect_compute_capability`: the GPUs, and how they were found."""

    gpus: tuple[GpuInfo, ...]
    source: SourceName | None  # the source that answered, None when no GPU is visible
    attempts: tuple[tuple[SourceName, str], ...] = field(default=())  # (source, outcome)
    cuda_visible_devices: str | None = None

    def __bool__(self) -> bool:
        return bool(self.gpus)

    @property
    def primary(self) -> GpuInfo | None:
        """The GPU that ``cuda`` (device 0) means, or None without a GPU."""
        return self.gpus[0] if self.gpus else None

    def summary(self) -> str:
        """Human-readable lines, as ``awq-kernel-select detect`` prints them."""
        lines: list[str] = []
        if not self.gpus:
            lines.append("No GPU visible: kernels will run on the CPU (plain torch path).")
        for gpu in self.gpus:
            cap = f"compute capability {gpu.capability}" if gpu.capability else f"arch {gpu.arch}"
            mem = f", {gpu.total_memory_bytes / 2**30:.1f} GiB" if gpu.total_memory_bytes else ""
            ver = []
            if gpu.driver_version:
                ver.append(f"driver {gpu.driver_version}")
            if gpu.runtime_version:
                ver.append(f"{'HIP' if gpu.backend == 'rocm' else 'CUDA'} {gpu.runtime_version}")
            tail = f" ({', '.join(ver)})" if ver else ""
            lines.append(f"GPU {gpu.index}: {gpu.name}, {cap}{mem}{tail} [{gpu.backend}, from {gpu.source}]")
        if self.cuda_visible_devices is not None:
            lines.append(f"CUDA_VISIBLE_DEVICES={self.cuda_visible_devices!r}")
        for source, outcome in self.attempts:
            lines.append(f"  source {source}: {outcome}")
        return "\n".join(lines)


class SourceUnavailable(Exception):
    """A detection source cannot be asked here (not installed, no driver, no binary)."""


class SourceError(Exception):
    """A detection source answered, but its answer could not be understood."""


class DeviceIndexError(LookupError):
    """The device index asked for is not among the visible GPUs."""


# --- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Physical:
    """What NVML and nvidia-smi tell about one physical GPU, before visibility is applied."""

    index: int
    uuid: str | None
    info: GpuInfo
    mig_uuids: tuple[str, ...] = ()


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Split ``CUDA_VISIBLE_DEVICES``; None means unset (all GPUs visible), [] means none."""
    if value is None:
        return None
    return [token.strip() for token in value.split(",") if token.strip()]


def apply_visible_devices(physical: Sequence[_Physical], value: str | None) -> list[GpuInfo]:
    """Map physical GPUs to the logical list that CUDA exposes under ``CUDA_VISIBLE_DEVICES``.

    Like the CUDA runtime, stop at the first entry that matches no device (``-1`` hides all
    the GPUs listed after it), and match UUIDs by unique prefix. A MIG id selects the MIG
    instance, which reports its parent GPU's capability.
    """
    tokens = parse_visible_devices(value)
    if tokens is None:
        return [replace(p.info, index=i, physical_index=p.index) for i, p in enumerate(physical)]
    chosen: list[GpuInfo] = []
    for token in tokens:
        match = _match_visible_token(physical, token)
        if match is None:
            break
        chosen.append(replace(match, index=len(chosen)))
    return chosen


def _match_visible_token(physical: Sequence[_Physical], token: str) -> GpuInfo | None:
    if token.lstrip("-").isdigit():
        number = int(token)
        hits = [p for p in physical if p.index == number]
        return replace(hits[0].info, physical_index=hits[0].index) if hits else None
    if token.startswith("MIG-"):
        for p in physical:
            if any(m == token or m.startswith(token) for m in p.mig_uuids) or (
                p.uuid and token.startswith(f"MIG-{p.uuid}")
            ):
                return replace(p.info, physical_index=p.index, uuid=token, mig=True)
        return None
    prefix = token if token.startswith("GPU-") else f"GPU-{token}"
    hits = [p for p in physical if p.uuid and p.uuid.startswith(prefix)]
    if len(hits) != 1:  # unknown or ambiguous prefix: CUDA stops here
        return None
    return replace(hits[0].info, physical_index=hits[0].index)


# --- sources ----------------------------------------------------------------------------------


def torch_source(visible: str | None) -> list[GpuInfo]:
    """Ask torch. torch already applies ``CUDA_VISIBLE_DEVICES`` itself."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise SourceUnavailable(f"torch not importable: {exc}") from exc
    is_rocm = getattr(torch.version, "hip", None) is not None
    if not torch.cuda.is_available():
        build = "ROCm" if is_rocm else ("CUDA " + torch.version.cuda if torch.version.cuda else "CPU-only")
        raise SourceUnavailable(f"torch {torch.__version__} ({build} build) sees no GPU")
    gpus: list[GpuInfo] = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        if is_rocm:
            arch = str(getattr(props, "gcnArchName", "") or "").split(":")[0] or None
            gpus.append(
                GpuInfo(
                    index=index,
                    name=props.name,
                    backend="rocm",
                    source="torch",
                    capability=None,
                    arch=arch,
                    total_memory_bytes=int(props.total_memory),
                    runtime_version=str(torch.version.hip),
                    multiprocessors=int(props.multi_processor_count),
                )
            )
        else:
            cap = ComputeCapability(int(props.major), int(props.minor))
            uuid = getattr(props, "uuid", None)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=props.name,
                    backend="cuda",
                    source="torch",
                    capability=cap,
                    arch=f"sm_{cap.to_int()}",
                    total_memory_bytes=int(props.total_memory),
                    uuid=f"GPU-{uuid}" if uuid is not None and not str(uuid).startswith("GPU-") else (str(uuid) if uuid else None),
                    runtime_version=torch.version.cuda,
                    driver_version=_nvml_driver_version(),
                    multiprocessors=int(props.multi_processor_count),
                )
            )
    return gpus


@functools.lru_cache(maxsize=None)
def cuda_device(index: int) -> GpuInfo:
    """The CUDA GPU torch calls ``cuda:index``, from torch (name, capability, SMs): what a
    dispatch plan is built for. A GPU's properties do not change while the process runs."""
    import torch

    props = torch.cuda.get_device_properties(index)
    cap = ComputeCapability(int(props.major), int(props.minor))
    return GpuInfo(index=index, name=props.name, backend="cuda", source="torch", capability=cap,
                   arch=f"sm_{cap.to_int()}", total_memory_bytes=int(props.total_memory),
                   multiprocessors=int(props.multi_processor_count))


def _nvml_driver_version() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return _text(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_source(visible: str | None) -> list[GpuInfo]:
    """Ask NVML (``nvidia-ml-py``); it does not initialise CUDA and ignores visibility."""
    try:
        import pynvml
    except ImportError as exc:
        raise SourceUnavailable("nvidia-ml-py (pynvml) is not installed") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise SourceUnavailable(f"NVML could not start: {exc}") from exc
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        physical: list[_Physical] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            cap = ComputeCapability(int(major), int(minor))
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            info = GpuInfo(
                index=index,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                backend="cuda",
                source="nvml",
                capability=cap,
                arch=f"sm_{cap.to_int()}",
                total_memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                uuid=uuid,
                physical_index=index,
                driver_version=driver,
            )
            physical.append(_Physical(index, uuid, info, _nvml_mig_uuids(pynvml, handle)))
    except pynvml.NVMLError as exc:
        raise SourceError(f"NVML failed while listing GPUs: {exc}") from exc
    finally:
        pynvml.nvmlShutdown()
    return apply_visible_devices(physical, visible)


def _nvml_mig_uuids(pynvml: object, handle: object) -> tuple[str, ...]:
    nvml = pynvml  # typed as object: nvidia-ml-py ships no stubs
    try:
        count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))  # type: ignore[attr-defined]
    except Exception:  # NVMLError_NotSupported on GPUs without MIG
        return ()
    uuids: list[str] = []
    for i in range(count):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)  # type: ignore[attr-defined]
            uuids.append(_text(nvml.nvmlDeviceGetUUID(mig)))  # type: ignore[attr-defined]
        except Exception:  # an empty MIG slot
            continue
    return tuple(uuids)


NVIDIA_SMI_QUERY = "index,uuid,name,compute_cap,memory.total,driver_version"


def run_nvidia_smi(args: Sequence[str], timeout: float = 10.0) -> str:
    """Run ``nvidia-smi`` and return stdout; :class:`SourceUnavailable` when it cannot run."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        raise SourceUnavailable("nvidia-smi is not on PATH")
    try:
        done = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceUnavailable(f"nvidia-smi could not run: {exc}") from exc
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise SourceUnavailable(
            f"nvidia-smi exited with {done.returncode}: {message[0] if message else 'no message'}"
        )
    return done.stdout


def parse_nvidia_smi_csv(text: str, mig_listing: str = "") -> list[_Physical]:
    """Parse ``nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits``.

    ``[N/A]`` and ``[Not Supported]`` fields become None; a line that does not have the six
    fields, or a GPU without a readable compute capability, is a :class:`SourceError`.
    ``mig_listing`` is the output of ``nvidia-smi -L``, used to map MIG ids to their GPU.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        raise SourceError("nvidia-smi printed no GPU rows")
    mig = _parse_mig_listing(mig_listing)
    physical: list[_Physical] = []
    for row in rows:
        cells = [cell.strip() for cell in row]
        if len(cells) != 6:
            raise SourceError(f"nvidia-smi row has {len(cells)} fields, expected 6: {row!r}")
        index_s, uuid, name, cap_s, mem_s, driver = (None if _na(c) else c for c in cells)
        if index_s is None or not index_s.isdigit():
            raise SourceError(f"nvidia-smi row has no GPU index: {row!r}")
        if cap_s is None:
            raise SourceError(
                f"nvidia-smi gave no compute_cap for GPU {index_s} (driver older than 510?)"
            )
        try:
            cap = ComputeCapability.parse(cap_s)
            memory = int(float(mem_s) * 2**20) if mem_s is not None else None  # MiB
        except ValueError as exc:
            raise SourceError(f"nvidia-smi row not understood: {row!r} ({exc})") from exc
        index = int(index_s)
        info = GpuInfo(
            index=index,
            name=name or "unknown NVIDIA GPU",
            backend="cuda",
            source="nvidia-smi",
            capability=cap,
            arch=f"sm_{cap.to_int()}",
            total_memory_bytes=memory,
            uuid=uuid,
            physical_index=index,
            driver_version=driver,
        )
        physical.append(_Physical(index, uuid, info, tuple(mig.get(index, ()))))
    return physical


def _na(cell: str) -> bool:
    return cell == "" or (cell.startswith("[") and cell.endswith("]"))


def _parse_mig_listing(text: str) -> dict[int, list[str]]:
    """``nvidia-smi -L``: ``GPU 0: ... (UUID: GPU-...)`` then indented ``MIG ... (UUID: MIG-...)``."""
    out: dict[int, list[str]] = {}
    current: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("GPU ") and ":" in stripped:
            number = stripped[4:].split(":", 1)[0]
            current = int(number) if number.isdigit() else None
        elif stripped.startswith("MIG ") and current is not None and "UUID: " in stripped:
            out.setdefault(current, []).append(stripped.split("UUID: ", 1)[1].rstrip(")").strip())
    return out


def nvidia_smi_source(visible: str | None) -> list[GpuInfo]:
    """Ask ``nvidia-smi``; its output is parsed by :func:`parse_nvidia_smi_csv`."""
    text = run_nvidia_smi([f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"])
    try:
        listing = run_nvidia_smi(["-L"])
    except SourceUnavailable:
        listing = ""
    return apply_visible_devices(parse_nvidia_smi_csv(text, listing), visible)


Source = Callable[[str | None], list[GpuInfo]]

#: The sources, in the order they are asked. Replace entries to change detection.
SOURCES: dict[SourceName, Source] = {
    "torch": torch_source,
    "nvml": nvml_source,
    "nvidia-smi": nvidia_smi_source,
}


def detect_compute_capability(
    device_index: int | None = None,
    *,
    sources: dict[SourceName, Source] | None = None,
    environ: dict[str, str] | None = None,
) -> Detection:
    """Find the visible GPUs and their compute capabilities.

    Returns a :class:`Detection` (falsy when there is no GPU: that is a normal answer). With
    ``device_index``, only that logical GPU is returned, and :class:`DeviceIndexError` is raised
    when it is not visible. Every source's outcome is kept in ``attempts``.
    """
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    attempts: list[tuple[SourceName, str]] = []
    found: list[GpuInfo] = []
    answered: SourceName | None = None
    for name, source in (SOURCES if sources is None else sources).items():
        try:
            gpus = source(visible)
        except SourceUnavailable as exc:
            attempts.append((name, f"unavailable: {exc}"))
            continue
        except SourceError as exc:
            attempts.append((name, f"error: {exc}"))
            continue
        if not gpus:
            attempts.append((name, "answered: no visible GPU"))
            continue
        attempts.append((name, f"answered: {len(gpus)} GPU(s)"))
        found, answered = gpus, name
        break
    if device_index is not None:
        if not 0 <= device_index < len(found):
            raise DeviceIndexError(
                f"GPU index {device_index} is not visible: {len(found)} GPU(s) found "
                f"(CUDA_VISIBLE_DEVICES={visible!r}); use an index below {len(found)}"
                if found
                else f"GPU index {device_index} asked for, but no GPU is visible here"
            )
        found = [found[device_index]]
    return Detection(tuple(found), answered, tuple(attempts), visible)
