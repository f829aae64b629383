"""Reading an AutoAWQ checkpoint folder: its quantization settings, validated, and its weight files.

Every error names the file and the field, and says what is expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compressed import QUANT_METHOD, SchemeError, read_scheme
from .layouts import CHECKPOINT_VERSIONS as VERSIONS
from .stack import at_least, check_rope_fields, portable_config


class CheckpointError(ValueError):
    """A checkpoint this library cannot load; the message names the file and the field."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    version: str
    bits: int
    group_size: int
    zero_point: bool
    modules_to_not_convert: tuple[str, ...]
    model_type: str
    weight_files: tuple[Path, ...]
    #: config fields this transformers needs passed explicitly (RoPE settings a 5.x config holds
    #: only as ``rope_parameters``, which 4.x would silently read as the defaults)
    config_overrides: tuple[tuple[str, Any], ...] = ()
    #: "autoawq", or "compressed-tensors" (W4A16 pack-quantized: ``compressed.py``), which
    #: ``load_quantized`` converts losslessly to the GEMM layout first (``version`` says "gemm")
    format: str = "autoawq"


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read and validate ``config.json``'s ``quantization_config`` and find the weight files."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder (this library loads local checkpoints only, no hub downloads)")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} is missing: an AutoAWQ checkpoint has a config.json")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} holds a JSON {type(config).__name__}, not an object with the model's settings")
    check_rope_fields(config, str(config_file))
    portable = portable_config(config)
    overrides = () if at_least(5, 0) else tuple((k, portable[k]) for k in portable if k not in config)
    quant = config.get("quantization_config")
    legacy = root / "quant_config.json"
    if quant is None and legacy.is_file():
        raw = json.loads(legacy.read_text())
        quant = {"bits": raw.get("w_bit"), "group_size": raw.get("q_group_size"), "version": raw.get("version"),
                 "zero_point": raw.get("zero_point"), "modules_to_not_convert": raw.get("modules_to_not_convert")}
    if quant is None:
        raise CheckpointError(f"{config_file} has no 'quantization_config': is this an AWQ checkpoint?")
    where = f"{config_file}: quantization_config"
    files = tuple(sorted(root.glob("*.safetensors"))) or tuple(sorted(root.glob("pytorch_model*.bin")))
    if str(quant.get("quant_method", "awq")).lower() == QUANT_METHOD:
        return _compressed_info(root, config, quant, where, files, overrides)
    if str(quant.get("quant_method", "awq")).lower() != "awq":
        raise CheckpointError(f"{where}.quant_method is {quant.get('quant_method')!r}: this library reads 'awq' "
                              f"(AutoAWQ) and {QUANT_METHOD!r} (W4A16) checkpoints")
    bits = quant.get("bits", quant.get("w_bit"))
    if bits != 4:
        raise CheckpointError(f"{where}.bits is {bits!r}: only 4-bit AWQ checkpoints are supported")
    version = str(quant.get("version", "")).lower()
    if version not in VERSIONS:
        raise CheckpointError(f"{where}.version is {quant.get('version')!r}; known versions: {', '.join(VERSIONS)}")
    group = quant.get("group_size", quant.get("q_group_size"))
    if not isinstance(group, int) or (group != -1 and group <= 0):
        raise CheckpointError(f"{where}.group_size is {group!r}: expected a positive integer or -1")
    zero_point = quant.get("zero_point", True)
    if not isinstance(zero_point, bool):
        raise CheckpointError(f"{where}.zero_point is {zero_point!r}: write true or false (JSON booleans, no quotes)")
    if not files:
        raise CheckpointError(f"{root} has no weights: expected model.safetensors (or shards) or pytorch_model.bin")
    return CheckpointInfo(
        path=root, version=version, bits=4, group_size=group,
        zero_point=zero_point,
        modules_to_not_convert=tuple(quant.get("modules_to_not_convert") or ()),
        model_type=str(config.get("model_type", "")), weight_files=files, config_overrides=overrides,
    )


def _compressed_info(root: Path, config: dict[str, Any], quant: dict[str, Any], where: str,
                     files: tuple[Path, ...], overrides: tuple[tuple[str, Any], ...]) -> CheckpointInfo:
    try:
        scheme = read_scheme(quant, where)
    except SchemeError as exc:
        raise CheckpointError(str(exc)) from exc
    if not files or any(f.suffix != ".safetensors" for f in files):
        raise CheckpointError(f"{root} has no safetensors weights: a compressed-tensors checkpoint keeps them there")
    return CheckpointInfo(
        path=root, version="gemm", bits=4, group_size=scheme.group_size, zero_point=not scheme.symmetric,
        modules_to_not_convert=not_converted(scheme.ignore), model_type=str(config.get("model_type", "")),
        weight_files=files, config_overrides=overrides, format=QUANT_METHOD,
    )


def not_converted(ignore: tuple[str, ...]) -> tuple[str, ...]:
    """compressed-tensors' ``ignore`` as AutoAWQ's ``modules_to_not_convert`` (names matched as
    substrings of the layer-relative name): ``re:.*mlp.gate.*`` -> ``mlp.gate``; lm_head, which
    AutoAWQ never quantizes, is dropped."""
    names = []
    for entry in ignore:
        name = entry[3:] if entry.startswith("re:") else entry
        name = name.removeprefix(".*").removesuffix(".*").replace("\\.", ".")
        if name and name != "lm_head":
            names.append(name)
    return tuple(names)
