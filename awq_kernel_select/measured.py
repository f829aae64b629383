"""Measured facts, per GPU: where GEMM overtakes GEMV, as the benchmark found it.

The benchmark (``awq_kernel_select.bench``) writes; :func:`select_kernel` reads. The file is a
small JSON document (``schema`` 1) at ``$AWQ_KERNEL_SELECT_CACHE`` or
``~/.cache/awq_kernel_select/measured.json``. An entry counts only for the same GPU name and
compute capability, and a file of another schema, or one that does not parse, is ignored with a
warning: a stale or broken cache never changes a selection silently.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .probes import Target

SCHEMA = 1


@dataclass(frozen=True)
class MeasuredCrossover:
    gpu_name: str
    capability: tuple[int, int]
    crossover_tokens: int  # the smallest tokens per forward at which the GEMM layout is faster
    measured_at: str = ""
    driver: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # torch, triton, this library

    def describe(self) -> str:
        when = f", {self.measured_at}" if self.measured_at else ""
        return f"GEMM layout faster from {self.crossover_tokens} tokens per forward ({self.gpu_name}{when})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasuredCrossover:
        cap = data["capability"]
        return cls(
            gpu_name=str(data["gpu_name"]),
            capability=(int(cap[0]), int(cap[1])),
            crossover_tokens=int(data["crossover_tokens"]),
            measured_at=str(data.get("measured_at", "")),
            driver=data.get("driver"),
            versions=dict(data.get("versions", {})),
        )


def cache_path() -> Path:
    custom = os.environ.get("AWQ_KERNEL_SELECT_CACHE")
    if custom:
        return Path(custom)
    return Path.home() / ".cache" / "awq_kernel_select" / "measured.json"


def _key(name: str, capability: tuple[int, int]) -> str:
    return f"{name}|{capability[0]}.{capability[1]}"


def load_all(path: Path | None = None) -> dict[str, MeasuredCrossover]:
    """Every valid entry of the cache; an unreadable file warns and counts as empty."""
    path = cache_path() if path is None else path
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            warnings.warn(
                f"ignoring measured-results cache {path}: schema {data.get('schema') if isinstance(data, dict) else '?'}"
                f" is not {SCHEMA}; re-run `awq-kernel-select bench` to measure again",
                stacklevel=2,
            )
            return {}
        gpus = data.get("gpus")
        if not isinstance(gpus, dict):
            raise ValueError(f"'gpus' is {type(gpus).__name__}, not an object of entries by GPU")
        return {key: MeasuredCrossover.from_dict(entry) for key, entry in gpus.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        warnings.warn(f"ignoring unreadable measured-results cache {path}: {exc}", stacklevel=2)
        return {}


def lookup_crossover(target: Target, path: Path | None = None) -> MeasuredCrossover | None:
    if target.name is None or target.capability is None:
        return None
    return load_all(path).get(_key(target.name, tuple(target.capability)))  # type: ignore[arg-type]


def save_crossover(entry: MeasuredCrossover, path: Path | None = None) -> Path:
    """Add or replace this GPU's entry; the file is replaced atomically."""
    path = cache_path() if path is None else path
    entries = load_all(path)
    entries[_key(entry.gpu_name, entry.capability)] = entry
    document = {"schema": SCHEMA, "gpus": {k: v.to_dict() for k, v in entries.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".measured-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
    os.replace(tmp, path)
    return path
