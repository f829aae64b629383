"""export(): a quantized checkpoint in another format, losslessly, for the engine that serves it.

* ``format="compressed-tensors"``: W4A16 ``pack-quantized`` (``compressed.py``), what
  llm-compressor writes and vLLM and transformers 5 read natively;
* ``format="autoawq-gemm"``: AutoAWQ's GEMM layout, the one AutoAWQ checkpoints vLLM's ``awq``
  methods read (a GEMV-layout checkpoint, which vLLM cannot load, becomes one).

The source is an AutoAWQ checkpoint (GEMM or GEMV layout) or a compressed-tensors one; only the
packed integers are moved, so exporting and exporting back gives every tensor bit for bit. The
checkpoint is validated first (the same reader as :func:`~awq_kernel_select.load_quantized`), the
output folder checked before any work, and written atomically (a temporary folder beside it, then
renamed); config, tokenizer and every other file are carried over. One safetensors shard is in
memory at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .atomic import OutputError, check_output, write_atomically
from .checkpoint import CheckpointError, CheckpointInfo, read_checkpoint
from .compressed import QUANT_METHOD, SUFFIXES, CompressedScheme, from_compressed, quantization_config, to_compressed
from .layouts import PackedWeights, convert

ExportFormat = Literal["compressed-tensors", "autoawq-gemm"]
FORMATS: tuple[ExportFormat, ...] = ("compressed-tensors", "autoawq-gemm")
AWQ_SUFFIXES = ("qweight", "qzeros", "scales")
INDEX = "model.safetensors.index.json"


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked; the message names the file, field or option."""


@dataclass(frozen=True)
class ExportReport:
    source: Path
    output: Path
    source_format: str  # "autoawq gemm", "autoawq gemv" or "compressed-tensors"
    format: ExportFormat
    layers: int  # quantized linears converted
    seconds: float

    def summary(self) -> str:
        return (f"{self.source} ({self.source_format}) -> {self.output} ({self.format}): {self.layers} quantized "
                f"layers, {self.seconds:.1f} s")


def export(path: str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
           format: ExportFormat = "compressed-tensors", overwrite: bool = False, progress: bool = True) -> ExportReport:
    """Write the checkpoint at ``path`` to ``output_dir`` in ``format`` (see the module docstring)."""
    started = time.time()
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: use one of {', '.join(FORMATS)}")
    source, output = Path(path), Path(output_dir)
    info = read_checkpoint(source)
    if info.format != QUANT_METHOD and info.version not in ("gemm", "gemv"):
        raise ExportError(f"{source / 'config.json'}: quantization_config.version is {info.version!r}; export reads "
                          "the gemm and gemv layouts")
    if info.group_size == -1:
        raise ExportError(f"{source / 'config.json'}: quantization_config.group_size is -1; compressed-tensors' "
                          "group scheme needs a group size")
    if any(f.suffix != ".safetensors" for f in info.weight_files):
        raise ExportError(f"{source}: export reads safetensors weights; load the checkpoint and save it with "
                          "safe_serialization=True first")
    if output.resolve() == source.resolve():
        raise ExportError(f"output_dir {output} is the source checkpoint: choose another folder")
    check_output(output, overwrite, ExportError)
    counted: list[int] = []

    def write(folder: Path) -> None:
        counted.append(_write(info, folder, format, progress))

    try:
        write_atomically(output, overwrite, write, ExportError)
    except OutputError as exc:
        raise ExportError(str(exc)) from exc
    source_format = QUANT_METHOD if info.format == QUANT_METHOD else f"autoawq {info.version}"
    return ExportReport(source, output, source_format, format, counted[0], time.time() - started)


def _write(info: CheckpointInfo, folder: Path, fmt: ExportFormat, progress: bool) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    handles: dict[Path, Any] = {f: safe_open(str(f), framework="pt") for f in info.weight_files}  # untyped
    where = {key: f for f, h in handles.items() for key in h.keys()}
    anchor = "weight_packed" if info.format == QUANT_METHOD else "qweight"
    parts = SUFFIXES if info.format == QUANT_METHOD else AWQ_SUFFIXES
    layers = {key.rsplit(".", 1)[0] for key in where if key.endswith("." + anchor)}
    symmetric = not info.zero_point
    converted = 0
    weight_map: dict[str, str] = {}
    for file in tqdm(info.weight_files, desc="export", unit="shard", disable=not progress):
        out: dict[str, torch.Tensor] = {}
        for key in handles[file].keys():
            module, _, suffix = key.rpartition(".")
            if module in layers and suffix in parts:
                if suffix != anchor:
                    continue  # written with its layer's anchor tensor
                tensors = {s: handles[where[f"{module}.{s}"]].get_tensor(f"{module}.{s}")
                           for s in parts if f"{module}.{s}" in where}
                out.update({f"{module}.{s}": t for s, t in _convert(info, module, tensors, fmt, symmetric).items()})
                converted += 1
            else:
                out[key] = handles[file].get_tensor(key)
        save_file(out, str(folder / file.name), metadata={"format": "pt"})
        weight_map.update({key: file.name for key in out})
    for item in info.path.iterdir():  # tokenizer, generation config, README...
        if item.name in ("config.json", INDEX, "quant_config.json") or item.suffix == ".safetensors":
            continue
        if item.is_file():
            shutil.copy2(item, folder / item.name)
    if (info.path / INDEX).is_file():
        index = json.loads((info.path / INDEX).read_text())
        index["weight_map"] = dict(sorted(weight_map.items()))
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = json.loads((info.path / "config.json").read_text())
    config["quantization_config"] = _quantization_config(info, fmt, symmetric)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return converted


def _convert(info: CheckpointInfo, module: str, tensors: dict[str, torch.Tensor], fmt: ExportFormat,
             symmetric: bool) -> dict[str, torch.Tensor]:
    try:
        if info.format == QUANT_METHOD:
            packed = from_compressed(tensors, info.group_size, "gemm", module)
            if fmt == "autoawq-gemm":
                return {"qweight": packed.qweight, "qzeros": packed.qzeros, "scales": packed.scales}
            return to_compressed(packed, symmetric, module)
        missing = [s for s in AWQ_SUFFIXES if s not in tensors]
        if missing:
            raise CheckpointError(f"{info.path}: {module}.{missing[0]} is missing")
        k = tensors["qweight"].shape[0] if info.version == "gemm" else tensors["qweight"].shape[1] * 8
        n = tensors["scales"].shape[1] if info.version == "gemm" else tensors["qweight"].shape[0]
        packed = PackedWeights(info.version, tensors["qweight"], tensors["qzeros"], tensors["scales"], k, n,
                               info.group_size)
        if fmt == "autoawq-gemm":
            gemm = convert(packed, "gemm")  # the same object where it is GEMM already
            return {"qweight": gemm.qweight.contiguous(), "qzeros": gemm.qzeros.contiguous(),
                    "scales": gemm.scales.contiguous()}
        return to_compressed(packed, symmetric, module)
    except ValueError as exc:
        raise ExportError(f"{info.path}: {module}: {exc}") from exc


def _quantization_config(info: CheckpointInfo, fmt: ExportFormat, symmetric: bool) -> dict[str, Any]:
    if fmt == "compressed-tensors":
        ignore = ("lm_head", *(f"re:.*{name}.*" for name in info.modules_to_not_convert))
        return quantization_config(CompressedScheme(info.group_size, symmetric, ignore))
    return {"quant_method": "awq", "bits": 4, "group_size": info.group_size, "zero_point": not symmetric,
            "version": "gemm", "modules_to_not_convert": list(info.modules_to_not_convert) or None}
