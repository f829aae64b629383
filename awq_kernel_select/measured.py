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
    """The cache file, read from the environment at each call (``AWQ_KERNEL_SELECT_CACHE``)."""
    custom = os.environ.get("AWQ_KERNEL_SELECT_CACHE")
    if custom:
        return Path(custom)
    return Path.home() / ".cache" / "awq_kernel_select" / "measured.json"


def _key(name: str, capability: tuple[int, int]) -> str:
    return f"{name}|{capability[0]}.{capability[1]}"


#: the most tokens per forward a crossover may name (the bench sweeps batch sizes up to 64)
MAX_CROSSOVER = 1 << 16


def _entry(key: str, raw: Any) -> MeasuredCrossover:
    """One entry, checked: its fields parse, the crossover is a whole number of tokens in range, and
    its content names the GPU its key names (an entry copied under another GPU's key is not used)."""
    if not isinstance(raw, dict):
        raise ValueError(f"entry {key!r} is a {type(raw).__name__}, not an object")
    tokens = raw.get("crossover_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_CROSSOVER:
        raise ValueError(f"entry {key!r}: crossover_tokens={tokens!r} is not a whole number from 1 to {MAX_CROSSOVER}")
    entry = MeasuredCrossover.from_dict(raw)
    if _key(entry.gpu_name, entry.capability) != key:
        raise ValueError(f"entry {key!r} describes {_key(entry.gpu_name, entry.capability)!r}")
    return entry


def _read(path: Path) -> tuple[dict[str, MeasuredCrossover], list[str]]:
    """Every valid entry of the file, and what was wrong with the rest (or with the whole file)."""
    if not path.exists():
        return {}, []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, [f"unreadable: {exc}"]
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        return {}, [f"schema {found} is not {SCHEMA}"]
    gpus = data.get("gpus")
    if not isinstance(gpus, dict):
        return {}, [f"'gpus' is {type(gpus).__name__}, not an object of entries by GPU"]
    entries: dict[str, MeasuredCrossover] = {}
    problems: list[str] = []
    for key, raw in gpus.items():
        try:
            entries[key] = _entry(key, raw)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            problems.append(str(exc))
    return entries, problems


def load_all(path: Path | None = None) -> dict[str, MeasuredCrossover]:
    """Every valid entry of the cache. An unreadable file, one of another schema, or a bad entry
    warns (naming the file and what is wrong) and is left out: never fatal, never used."""
    path = cache_path() if path is None else path
    entries, problems = _read(path)
    if problems:
        warnings.warn(f"ignoring unreadable measured-results cache {path}: {'; '.join(problems)}; re-run "
                      "`awq-kernel-select bench` to measure again", stacklevel=2)
    return entries


def lookup_crossover(target: Target, path: Path | None = None) -> MeasuredCrossover | None:
    if target.name is None or target.capability is None:
        return None
    return load_all(path).get(_key(target.name, tuple(target.capability)))  # type: ignore[arg-type]


def save_crossover(entry: MeasuredCrossover, path: Path | None = None) -> Path:
    """Add or replace this GPU's entry, keeping every other valid one. Writers take a file lock
    beside the cache, read, merge and replace the file atomically, so concurrent saves all land;
    a symlinked cache is written through to its target; a failed write leaves no temporary file."""
    from filelock import FileLock

    _entry(_key(entry.gpu_name, entry.capability), entry.to_dict())  # refuse an entry we would not read
    path = cache_path() if path is None else path
    target = path.resolve()  # write through a symlink, never replace it
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        entries, problems = _read(target)
        if problems:
            warnings.warn(f"measured-results cache {target}: dropping what cannot be read ({'; '.join(problems)}); "
                          f"keeping {len(entries)} valid entries", stacklevel=2)
        entries[_key(entry.gpu_name, entry.capability)] = entry
        document = {"schema": SCHEMA, "gpus": {k: v.to_dict() for k, v in entries.items()}}
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".measured-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle, indent=2)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path
