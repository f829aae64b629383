"""Measured facts, per GPU model: one store, one reader, one writer.

What this library measured on a GPU decides how it runs there: where the GEMM layout overtakes
the GEMV layout (the crossover, from ``awq-kernel-select bench``), and which tiles run each
layer shape fastest (from ``python -m benchmarks.kernels --sweep``). Both live in one schema,
in two places read in this order, later entries winning:

1. the files shipped with the package, one per GPU model (``awq_kernel_select/gpus/*.json``),
   or the files ``AWQ_KERNEL_SELECT_TUNED`` names instead (separated by ``os.pathsep``);
2. the user's overlay, ``$AWQ_KERNEL_SELECT_CACHE`` or ``~/.cache/awq_kernel_select/measured.json``,
   which the benchmarks write to.

A document is ``{"schema": 2, "gpus": {"<name>|<major>.<minor>": entry}}``; an entry names its
GPU and capability and may carry ``multiprocessors``, ``crossover_tokens`` (with
``measured_at``, ``driver``, ``versions``), ``source`` (one line) and ``tiles`` (one per
layout, K, N, group size and M bucket, with the winning ``config`` and, above M = 16, whether
the fused kernel or dequantize + cuBLAS won: ``path``). Entries count only for the same GPU name
and capability; where a GPU model has no tiles of its own, the tiles of another model of the same
chip (capability and SM count) are used, and the plan says so. Files are read at each call:
setting either variable between two calls takes effect at the second. A file that does not parse,
of another schema, or an entry or tile that fails its checks, is reported and left out, never
fatal and never used.

:func:`dispatch_plan` turns the facts of one GPU into the
:class:`~awq_kernel_select.kernels.dispatch.DispatchPlan` that ``select_kernel`` puts in its
``Selection`` and ``load_quantized`` hands to the layers.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .kernels.dispatch import CPU_PLAN, DispatchPlan, TableKey, TunedEntry, m_bucket, set_default_planner
from .kernels.hopper import HopperConfig
from .kernels.matmul import MatmulConfig
from .probes import Target

SCHEMA = 2
READABLE_SCHEMAS = (1, 2)  # schema 1: crossovers only
#: the files shipped with the package, one per GPU model
SHIPPED_DIR = Path(__file__).parent / "gpus"
#: the most tokens per forward a crossover may name (the bench sweeps batch sizes up to 64)
MAX_CROSSOVER = 1 << 16


@dataclass(frozen=True)
class Chip:
    """What tiles depend on: the instruction set and how many SMs a grid is spread over. GPU
    models that share both (the H100 SXM and the H200: GH100 with 132 SMs; not the 114-SM H100
    PCIe) run the same tiles best but for their memory's speed."""

    capability: tuple[int, int]
    multiprocessors: int

    def __str__(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}, {self.multiprocessors} SMs"


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
    def from_dict(cls, data: Mapping[str, Any]) -> MeasuredCrossover:
        cap = data["capability"]
        return cls(
            gpu_name=str(data["gpu_name"]),
            capability=(int(cap[0]), int(cap[1])),
            crossover_tokens=int(data["crossover_tokens"]),
            measured_at=str(data.get("measured_at", "")),
            driver=data.get("driver"),
            versions=dict(data.get("versions", {})),
        )


@dataclass(frozen=True)
class GpuFacts:
    """Everything measured on one GPU model, merged over the files that hold it."""

    gpu_name: str
    capability: tuple[int, int]
    multiprocessors: int | None = None
    crossover: MeasuredCrossover | None = None
    tiles: Mapping[TableKey, TunedEntry] = field(default_factory=dict)
    tiles_from: str | None = None  # the GPU model the tiles (or those this one lacks) were measured on
    files: tuple[str, ...] = ()
    own_tiles: int = 0  # how many of ``tiles`` were measured on this GPU model

    @property
    def chip(self) -> Chip | None:
        return None if self.multiprocessors is None else Chip(self.capability, self.multiprocessors)

    def describe_tiles(self) -> str:
        if not self.tiles:
            return f"no tuned tiles for {self.gpu_name}: heuristic tiles (python -m benchmarks.kernels --sweep measures them)"
        where = ", ".join(Path(f).name for f in self.files)
        if self.tiles_from is not None and self.own_tiles:
            return (f"{self.own_tiles} of its tiles tuned on this GPU model, {len(self.tiles) - self.own_tiles} on "
                    f"{self.tiles_from} (the same chip: {self.chip}; {where})")
        if self.tiles_from is not None:
            return (f"tiles tuned on {self.tiles_from} (the same chip: {self.chip}; this GPU has none of its own: "
                    f"{where})")
        return f"tiles tuned on this GPU model ({where})"


def cache_path() -> Path:
    """The user's overlay, read from the environment at each call (``AWQ_KERNEL_SELECT_CACHE``)."""
    custom = os.environ.get("AWQ_KERNEL_SELECT_CACHE")
    if custom:
        return Path(custom)
    return Path.home() / ".cache" / "awq_kernel_select" / "measured.json"


def table_files() -> list[Path]:
    """The per-GPU files read before the overlay: ``AWQ_KERNEL_SELECT_TUNED``'s, else the shipped ones."""
    custom = os.environ.get("AWQ_KERNEL_SELECT_TUNED")
    if custom:
        return [Path(f) for f in custom.split(os.pathsep) if f]
    return sorted(SHIPPED_DIR.glob("*.json"))


def gpu_key(name: str, capability: tuple[int, int]) -> str:
    return f"{name}|{capability[0]}.{capability[1]}"


def shipped_file(name: str) -> Path:
    """Where the package keeps ``name``'s facts (what ``benchmarks.kernels --sweep --ship`` writes)."""
    return SHIPPED_DIR / f"{name.lower().replace(' ', '-')}.json"


# --- checking ------------------------------------------------------------------------------------

def _tile(raw: Any) -> tuple[TableKey, TunedEntry]:
    if not isinstance(raw, dict):
        raise ValueError(f"a tile is a {type(raw).__name__}, not an object")
    layout, k, n, g, m = (raw.get(f) for f in ("layout", "K", "N", "G", "M"))
    if layout not in ("gemm", "gemv") or not all(isinstance(v, int) and v > 0 for v in (k, n, g, m)):
        raise ValueError(f"tile {({f: raw.get(f) for f in ('layout', 'K', 'N', 'G', 'M')})}: needs layout gemm|gemv "
                         "and positive K, N, G, M")
    if m_bucket(int(m)) != m:  # type: ignore[arg-type]
        raise ValueError(f"tile M={m} is not one of the M buckets")
    config = MatmulConfig(**raw["config"])
    path = raw.get("path")
    if path not in (None, "gemm", "dequant", "gemv", "wgmma"):
        raise ValueError(f"tile path={path!r}: one of gemm, dequant, wgmma")
    if path == "wgmma":  # the Gluon tile (kernels/hopper.py), GEMV layout only
        if layout != "gemv":
            raise ValueError("a wgmma tile reads the GEMV layout: layout must be gemv")
        HopperConfig.from_matmul(config).check(int(g))  # type: ignore[arg-type]
    else:
        config.check(layout == "gemv", int(g))  # type: ignore[arg-type]
    return (str(layout), int(k), int(n), int(g), int(m)), TunedEntry(config, path)  # type: ignore[arg-type]


def _check_entry(key: str, raw: Any) -> tuple[dict[str, Any], list[str]]:
    """An entry with its fields checked and its bad tiles dropped; raises where the entry as a
    whole is unusable (it names no GPU, or another GPU than its key, or a crossover out of range)."""
    if not isinstance(raw, dict):
        raise ValueError(f"entry {key!r} is a {type(raw).__name__}, not an object")
    cap = raw.get("capability")
    name = raw.get("gpu_name")
    if not isinstance(name, str) or not isinstance(cap, (list, tuple)) or len(cap) != 2:
        raise ValueError(f"entry {key!r}: gpu_name and capability [major, minor] are required")
    if gpu_key(name, (int(cap[0]), int(cap[1]))) != key:
        raise ValueError(f"entry {key!r} describes {gpu_key(name, (int(cap[0]), int(cap[1])))!r}")
    tokens = raw.get("crossover_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_CROSSOVER):
        raise ValueError(f"entry {key!r}: crossover_tokens={tokens!r} is not a whole number from 1 to {MAX_CROSSOVER}")
    sms = raw.get("multiprocessors")
    if sms is not None and (isinstance(sms, bool) or not isinstance(sms, int) or sms < 1):
        raise ValueError(f"entry {key!r}: multiprocessors={sms!r} is not a positive whole number")
    tiles, problems = [], []
    for tile in raw.get("tiles", []) or []:
        try:
            _tile(tile)
            tiles.append(tile)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"entry {key!r}: dropping a tile: {exc}")
    return {**raw, "tiles": tiles}, problems


def _legacy_table(data: dict[str, Any]) -> dict[str, Any] | None:
    """A tile table in the format before schema 2 (``gpu``, ``chip``, ``entries``) as a document."""
    chip = data.get("chip") if isinstance(data.get("chip"), dict) else None
    if not isinstance(data.get("gpu"), str) or chip is None:
        return None
    cap = tuple(chip["capability"])
    entry = {"gpu_name": data["gpu"], "capability": list(cap), "multiprocessors": chip.get("multiprocessors"),
             "source": data.get("source", ""), "tiles": data.get("entries", [])}
    return {"schema": SCHEMA, "gpus": {gpu_key(data["gpu"], (int(cap[0]), int(cap[1]))): entry}}


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every usable entry of one file (raw, checked), and what was wrong with the rest."""
    if not path.exists():
        return {}, []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, [f"unreadable: {exc}"]
    if isinstance(data, dict) and "schema" not in data:
        data = _legacy_table(data) or data
    if not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        return {}, [f"schema {found} is not {SCHEMA}"]
    gpus = data.get("gpus")
    if not isinstance(gpus, dict):
        return {}, [f"'gpus' is {type(gpus).__name__}, not an object of entries by GPU"]
    entries: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for key, raw in gpus.items():
        try:
            if data["schema"] == 1 and isinstance(raw, dict) and raw.get("crossover_tokens") is None:
                raise ValueError(f"entry {key!r}: crossover_tokens is required in schema 1")
            entries[key], dropped = _check_entry(key, raw)
            problems += dropped
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            problems.append(str(exc))
    return entries, problems


def _read_all(files: Iterable[Path], what: str) -> list[tuple[Path, dict[str, dict[str, Any]]]]:
    found = []
    for path in files:
        entries, problems = _read(path)
        if problems:
            warnings.warn(f"ignoring unreadable {what} {path}: {'; '.join(problems)}; re-run the benchmark that "
                          "wrote it (awq-kernel-select bench, python -m benchmarks.kernels --sweep) to measure again",
                          stacklevel=3)
        found.append((path, entries))
    return found


# --- reading -------------------------------------------------------------------------------------

def facts_for(name: str, capability: tuple[int, int], multiprocessors: int | None = None, *,
              use_overlay: bool = True) -> GpuFacts | None:
    """What was measured on GPU model ``name`` (None: nothing). ``multiprocessors`` (its SM count)
    lets a GPU use another model's tiles of the same chip for the shapes and token counts it has
    not measured itself (all of them, where it has no tiles of its own): a sweep of some shapes,
    or of one path, on this GPU then adds to the other model's table instead of hiding it."""
    cap = (int(capability[0]), int(capability[1]))
    key = gpu_key(name, cap)
    tables = _read_all(table_files(), "tuned table")
    overlay = _read_all([cache_path()], "measured-results cache") if use_overlay else []
    tiles: dict[TableKey, TunedEntry] = {}
    crossover: MeasuredCrossover | None = None
    sms = multiprocessors
    files: list[str] = []
    for path, entries in [*tables, *overlay]:
        raw = entries.get(key)
        if raw is None:
            continue
        files.append(str(path))
        tiles.update(dict(_tile(t) for t in raw["tiles"]))
        if raw.get("crossover_tokens") is not None:
            crossover = MeasuredCrossover.from_dict(raw)
        if sms is None and raw.get("multiprocessors") is not None:
            sms = int(raw["multiprocessors"])
    tiles_from = None
    own = len(tiles)
    if sms is not None:  # another model of the same chip, from the per-GPU files: what this one lacks
        for path, entries in tables:
            sibling = next((raw for k, raw in entries.items() if k != key and raw.get("multiprocessors") == sms
                            and tuple(raw["capability"]) == cap and raw["tiles"]), None)
            if sibling is not None:
                other = gpu_key(str(sibling["gpu_name"]), cap)
                same = [(p, e) for p, e in tables if other in e]
                borrowed: dict[TableKey, TunedEntry] = {}
                for p, e in same:
                    borrowed.update(dict(_tile(t) for t in e[other]["tiles"]))
                if borrowed.keys() - tiles.keys():
                    tiles = {**borrowed, **tiles}
                    tiles_from = str(sibling["gpu_name"])
                    files += [str(p) for p, _ in same if str(p) not in files]
                break
    if not files:
        return None
    return GpuFacts(name, cap, sms, crossover, tiles, tiles_from, tuple(files), own)


def load_all(path: Path | None = None) -> dict[str, MeasuredCrossover]:
    """Every measured crossover of the overlay (or of ``path``), by GPU key. An unreadable file,
    one of another schema, or a bad entry warns (naming the file and what is wrong) and is left
    out: never fatal, never used."""
    [(_, entries)] = _read_all([cache_path() if path is None else path], "measured-results cache")
    return {k: MeasuredCrossover.from_dict(v) for k, v in entries.items() if v.get("crossover_tokens") is not None}


def lookup_crossover(target: Target, path: Path | None = None) -> MeasuredCrossover | None:
    if target.name is None or target.capability is None:
        return None
    return load_all(path).get(gpu_key(target.name, tuple(target.capability)))  # type: ignore[arg-type]


def dispatch_plan(facts: GpuFacts | None, name: str, capability: tuple[int, int],
                  multiprocessors: int | None) -> DispatchPlan:
    """The plan of one GPU: its measured tiles (or heuristic ones) over its SMs."""
    sms = multiprocessors or (facts.multiprocessors if facts is not None else None)
    if facts is None:
        note = f"no tuned tiles for {name}: heuristic tiles (python -m benchmarks.kernels --sweep measures them)"
    else:
        note = facts.describe_tiles()
    return DispatchPlan(tiles=dict(facts.tiles) if facts is not None else {}, multiprocessors=sms or 4,
                        pdl_capable=capability[0] >= 9, wgmma_capable=tuple(capability) == (9, 0), gpu=name,
                        tiles_note=note,
                        crossover_tokens=facts.crossover.crossover_tokens if facts and facts.crossover else None)


def facts_for_target(target: Target) -> GpuFacts | None:
    if target.device != "cuda" or target.name is None or target.capability is None:
        return None
    return facts_for(target.name, (target.capability[0], target.capability[1]), target.multiprocessors)


def plan_for_target(target: Target, facts: GpuFacts | None) -> DispatchPlan | None:
    """The plan for a selection's target (``facts``: :func:`facts_for_target`'s): a detected CUDA
    GPU's, the CPU's; None for a GPU named only by its capability (a what-if: no GPU model, no
    SM count, no tiles)."""
    if target.device == "cpu":
        return CPU_PLAN
    if target.device != "cuda" or target.name is None or target.capability is None:
        return None
    cap = (target.capability[0], target.capability[1])
    return dispatch_plan(facts, target.name, cap, target.multiprocessors)


_DEVICE_PLANS: dict[tuple[object, ...], DispatchPlan] = {}


def plan_for_device(device: torch.device) -> DispatchPlan:
    """The plan of a CUDA device for calls that bring none (a module built by hand). Built once
    per device and setting of the two variables above, so that changing either takes effect."""
    from .detect import cuda_device

    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, os.environ.get("AWQ_KERNEL_SELECT_TUNED"), os.environ.get("AWQ_KERNEL_SELECT_CACHE"))
    plan = _DEVICE_PLANS.get(key)
    if plan is None:
        gpu = cuda_device(index)
        assert gpu.capability is not None
        cap = (gpu.capability.major, gpu.capability.minor)
        plan = dispatch_plan(facts_for(gpu.name, cap, gpu.multiprocessors), gpu.name, cap, gpu.multiprocessors)
        _DEVICE_PLANS[key] = plan
    return plan


set_default_planner(plan_for_device)


# --- writing -------------------------------------------------------------------------------------

def save_measurement(gpu_name: str, capability: tuple[int, int], *, multiprocessors: int | None = None,
                     crossover: MeasuredCrossover | None = None, tiles: Iterable[Mapping[str, Any]] = (),
                     source: str | None = None, path: Path | None = None) -> Path:
    """The one writer: add what was measured on one GPU model to ``path`` (default: the user's
    overlay; a shipped file for maintainers), keeping every other valid entry and, for this GPU,
    every tile not measured again. Writers take a file lock beside the file, read, merge and
    replace it atomically, so concurrent saves all land; a symlink is written through to its
    target; a failed write leaves no temporary file. What would not be read back is refused."""
    from filelock import FileLock

    cap = (int(capability[0]), int(capability[1]))
    key = gpu_key(gpu_name, cap)
    update: dict[str, Any] = {"gpu_name": gpu_name, "capability": list(cap)}
    if multiprocessors is not None:
        update["multiprocessors"] = int(multiprocessors)
    if crossover is not None:
        if gpu_key(crossover.gpu_name, crossover.capability) != key:
            raise ValueError(f"the crossover was measured on {crossover.gpu_name}, not {gpu_name}")
        update.update({k: v for k, v in crossover.to_dict().items() if k not in ("gpu_name", "capability")})
    if source is not None:
        update["source"] = source
    new_tiles = [dict(t) for t in tiles]
    _, problems = _check_entry(key, {**update, "tiles": new_tiles})  # raises on a bad entry
    if problems:
        raise ValueError("; ".join(problems))
    path = cache_path() if path is None else path
    target = path.resolve()  # write through a symlink, never replace it
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        entries, problems = _read(target)
        if problems:
            warnings.warn(f"measured-results file {target}: dropping what cannot be read ({'; '.join(problems)}); "
                          f"keeping {len(entries)} valid entries", stacklevel=2)
        entry = {**entries.get(key, {}), **update}
        merged = {_tile(t)[0]: t for t in entries.get(key, {}).get("tiles", [])}
        merged.update({_tile(t)[0]: t for t in new_tiles})
        entry["tiles"] = [merged[k] for k in sorted(merged)]
        if not entry["tiles"]:
            del entry["tiles"]
        entries[key] = entry
        document = {"schema": SCHEMA, "gpus": entries}
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".measured-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(dumps(document))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def dumps(document: Mapping[str, Any]) -> str:
    """A document as JSON with one line per tile (the files are read by people too)."""
    parts = []
    for key, entry in document["gpus"].items():
        fields = [f"   {json.dumps(k)}: {json.dumps(v)}" for k, v in entry.items() if k != "tiles"]
        if entry.get("tiles"):
            rows = ",\n".join(f"    {json.dumps(t)}" for t in entry["tiles"])
            fields.append(f'   "tiles": [\n{rows}\n   ]')
        parts.append(f"  {json.dumps(key)}: {{\n" + ",\n".join(fields) + "\n  }")
    return f'{{\n "schema": {document["schema"]},\n "gpus": {{\n' + ",\n".join(parts) + "\n }\n}\n"


def save_crossover(entry: MeasuredCrossover, path: Path | None = None) -> Path:
    """Add or replace this GPU's measured crossover (:func:`save_measurement`)."""
    return save_measurement(entry.gpu_name, entry.capability, crossover=entry, path=path)
