"""What an engine users graduate to would run for a checkpoint, and what to export for it first.

A second policy table, for engines this library does not run: each row is one way an engine
reads a 4-bit checkpoint, with the facts it depends on cited from that engine's source (as
``policy.py`` cites its rows). :func:`engine_choice` walks the rows of one engine in the engine's
own order and returns the first that fits, with why every other row did not.

vLLM (sources read at github.com/vllm-project/vllm, ``main`` of late 2026):

* an AutoAWQ checkpoint (``quant_method: awq``) goes to ``auto_awq``
  (``model_executor/layers/quantization/auto_awq.py``: minimum capability 7.5, fp16 and bf16
  activations), which reads the GEMM layout's ``qweight [K, N/8]`` only
  (``_convert_awq_to_standard_format``): a GEMV-layout checkpoint must be exported first. Where
  Marlin supports the scheme (``check_marlin_supported`` with the AWQ type ``uint4``, which takes
  zero points) it picks a mixed-precision kernel with ``choose_mp_linear_kernel``, else its Triton
  AWQ GEMM (``AutoAWQLinearMethod``);
* a compressed-tensors W4A16 checkpoint goes to ``CompressedTensorsWNA16``
  (``compressed_tensors/schemes/compressed_tensors_wNa16.py``: symmetric ``uint4b8``, asymmetric
  ``uint4`` with zero points) and the same chooser;
* ``choose_mp_linear_kernel`` (``model_executor/kernels/linear/__init__.py``,
  ``_POSSIBLE_KERNELS[CUDA]``) tries, in order: CutlassW4A8 (8-bit activations: not W4A16),
  Machete (``mixed_precision/machete.py``: compute capability 9.0 exactly; group sizes -1, 64,
  128 with 16-bit activations, ``utils/machete_utils.py``; K % 64 and N % 128 per layer),
  AllSpark (8-bit weights), Marlin (``mixed_precision/marlin.py``: 7.5+; group sizes -1, 32, 64,
  128), then Conch and Exllama. A layer whose shape a kernel refuses gets the next one.

transformers 5 (observed on 5.25.0 with compressed-tensors 0.20.1, ``tests/test_export.py``): an
AutoAWQ checkpoint needs ``gptqmodel`` ("Loading an AWQ quantized model requires gptqmodel"); a
symmetric compressed-tensors checkpoint loads natively (decompressed to dense weights); an
asymmetric one fails to load (the zero points are expected unpacked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from .checkpoint import read_checkpoint
from .compressed import QUANT_METHOD
from .detect import ComputeCapability as CC

Engine = Literal["vllm", "transformers"]
ENGINES: tuple[Engine, ...] = ("vllm", "transformers")
Format = Literal["autoawq-gemm", "autoawq-gemv", "compressed-tensors"]


@dataclass(frozen=True)
class EngineRow:
    """One way an engine runs a 4-bit checkpoint."""

    engine: Engine
    name: str  # the engine's method and kernel, as its logs name them
    reads: tuple[Format, ...]  # checkpoint formats it takes (others: export first)
    source: str
    min_capability: CC | None = None
    exact_capability: CC | None = None
    group_sizes: tuple[int, ...] | None = None  # None: any
    zero_point: bool | None = None  # None: either; False: symmetric only; True: asymmetric only
    cpu: bool = False  # runs without a GPU
    notes: str = ""


ENGINE_ROWS: tuple[EngineRow, ...] = (
    EngineRow("vllm", "auto_awq -> Machete", ("autoawq-gemm",), "vllm auto_awq.py; kernels/linear/mixed_precision/machete.py",
              exact_capability=CC(9, 0), group_sizes=(-1, 64, 128), zero_point=True,
              notes="per layer: K % 64 == 0 and N % 128 == 0, else the next kernel"),
    EngineRow("vllm", "auto_awq -> Marlin", ("autoawq-gemm",), "vllm auto_awq.py; kernels/linear/mixed_precision/marlin.py",
              min_capability=CC(7, 5), group_sizes=(-1, 32, 64, 128), zero_point=True),
    EngineRow("vllm", "auto_awq -> Triton AWQ GEMM", ("autoawq-gemm",), "vllm auto_awq.py (AutoAWQLinearMethod)",
              min_capability=CC(7, 5)),
    EngineRow("vllm", "compressed-tensors WNA16 -> Machete", ("compressed-tensors",),
              "vllm compressed_tensors_wNa16.py; kernels/linear/mixed_precision/machete.py",
              exact_capability=CC(9, 0), group_sizes=(-1, 64, 128),
              notes="per layer: K % 64 == 0 and N % 128 == 0, else the next kernel"),
    EngineRow("vllm", "compressed-tensors WNA16 -> Marlin", ("compressed-tensors",),
              "vllm compressed_tensors_wNa16.py; kernels/linear/mixed_precision/marlin.py",
              min_capability=CC(8, 0), group_sizes=(-1, 32, 64, 128)),
    EngineRow("transformers", "compressed-tensors (decompressed to dense weights)", ("compressed-tensors",),
              "transformers 5.25.0 + compressed-tensors 0.20.1, tests/test_export.py", zero_point=False, cpu=True,
              notes="an asymmetric checkpoint does not load there (zero points expected unpacked)"),
    EngineRow("transformers", "AutoAWQ through gptqmodel", ("autoawq-gemm",),
              "transformers 5.x: 'Loading an AWQ quantized model requires gptqmodel'", cpu=True,
              notes="needs the gptqmodel package installed"),
)


@dataclass(frozen=True)
class EngineChoice:
    """What ``engine`` would run, and what to do first; ``rejected``: every other row and why."""

    engine: Engine
    row: EngineRow
    checkpoint_format: Format
    export_to: Format | None  # None: the checkpoint is read as it is
    reasons: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...] = field(default=())

    def explain(self) -> str:
        lines = [f"{self.engine}: {self.row.name} ({self.row.source})"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.rejected:
            lines.append("not chosen:")
            lines += [f"  {name}: {why}" for name, why in self.rejected]
        return "\n".join(lines)


class NoEngineRowError(RuntimeError):
    """No way of the engine runs this checkpoint on this GPU; the message lists every reason."""


def _why_not(row: EngineRow, capability: CC | None, group_size: int, zero_point: bool) -> list[str]:
    why = []
    if capability is None:
        if not row.cpu:
            why.append("needs a GPU")
    else:
        if row.exact_capability is not None and capability != row.exact_capability:
            why.append(f"needs compute capability {row.exact_capability}, GPU has {capability}")
        if row.min_capability is not None and capability < row.min_capability:
            why.append(f"needs compute capability >= {row.min_capability}, GPU has {capability}")
    if row.group_sizes is not None and group_size not in row.group_sizes:
        why.append(f"group sizes {', '.join(map(str, row.group_sizes))}; the checkpoint has {group_size}")
    if row.zero_point is not None and row.zero_point != zero_point:
        why.append("symmetric checkpoints only (no zero points)" if row.zero_point is False
                   else "checkpoints with zero points only")
    return why


def engine_choice(engine: Engine, checkpoint_format: Format, *, capability: CC | tuple[int, int] | None,
                  group_size: int = 128, zero_point: bool = True) -> EngineChoice:
    """The first row of ``engine`` (in the engine's own order) that runs a checkpoint of this format,
    group size and symmetry on a GPU of ``capability`` (None: no GPU): one that reads the checkpoint
    as it is if any fits, else one that reads it after an export this library makes losslessly."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: one of {', '.join(ENGINES)}")
    cap = None if capability is None else CC(*capability)
    rejected: list[tuple[str, str]] = []
    rows = [r for r in ENGINE_ROWS if r.engine == engine]
    # rows that read the checkpoint as it is come first; the others need an export
    for row in [r for r in rows if checkpoint_format in r.reads] + [r for r in rows if checkpoint_format not in r.reads]:
        why = _why_not(row, cap, group_size, zero_point)
        if why:
            rejected.append((row.name, "; ".join(why)))
            continue
        export_to = None if checkpoint_format in row.reads else row.reads[0]
        reasons = [f"{row.name} reads {row.reads[0]} checkpoints"
                   + (f" and runs on compute capability {cap}" if cap is not None else " and runs without a GPU")]
        if export_to is not None:
            reasons.append(f"the {checkpoint_format} checkpoint must be exported first: awq-kernel-select export "
                           f"CHECKPOINT OUT --format {'compressed-tensors' if export_to == 'compressed-tensors' else 'autoawq-gemm'}"
                           " (lossless)")
        if row.notes:
            reasons.append(f"note: {row.notes}")
        return EngineChoice(engine, row, checkpoint_format, export_to, tuple(reasons), tuple(rejected))
    details = "\n".join(f"  {name}: {why}" for name, why in rejected)
    raise NoEngineRowError(f"{engine} has no way to run a {checkpoint_format} checkpoint (group size {group_size}, "
                           f"{'asymmetric' if zero_point else 'symmetric'}) on "
                           f"{'compute capability ' + str(cap) if cap else 'the CPU'}:\n{details}")


def engine_choice_for(path: str | os.PathLike[str], engine: Engine, capability: CC | tuple[int, int] | None) -> EngineChoice:
    """:func:`engine_choice` for the checkpoint at ``path`` (its format, group size and symmetry read
    and validated by the same reader as ``load_quantized``)."""
    info = read_checkpoint(path)
    if info.format == QUANT_METHOD:
        fmt: Format = "compressed-tensors"
    elif info.version in ("gemm", "gemv"):
        fmt = "autoawq-gemm" if info.version == "gemm" else "autoawq-gemv"
    else:
        raise ValueError(f"{info.path}: version {info.version!r}: export reads gemm and gemv checkpoints; "
                         "the engines' AWQ paths read the GEMM layout")
    return engine_choice(engine, fmt, capability=capability, group_size=info.group_size, zero_point=info.zero_point)
