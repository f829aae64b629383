"""select_kernel(): the policy table, applied to this hardware, workload and environment."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Collection, Mapping, Sequence

from .detect import ComputeCapability, Detection, DeviceIndexError, GpuInfo, detect_compute_capability
from .kernels.dispatch import DispatchPlan
from .measured import MeasuredCrossover, facts_for_target, plan_for_target
from .policy import CONVERTIBLE, DEFAULT_TABLE, VERSIONS, KernelSpec, Layout, PolicyTable
from .probes import Probe, Target, Verdict, check


@dataclass(frozen=True)
class Workload:
    """How many tokens one forward pass carries in the steady state.

    ``interactive`` is one user decoding (1 token per forward); ``serving`` is batched
    decoding of many requests (64 by default). A batch size ``N`` means ``N`` tokens per
    decode step.
    """

    name: str
    tokens_per_forward: int

    def __post_init__(self) -> None:
        if self.tokens_per_forward < 1:
            raise ValueError(f"tokens per forward must be >= 1, got {self.tokens_per_forward}")

    @classmethod
    def parse(cls, value: str | int | Workload) -> Workload:
        if isinstance(value, Workload):
            return value
        if isinstance(value, int):
            return cls(f"batch {value}", value)
        if value in PRESETS:
            return PRESETS[value]
        raise ValueError(
            f"unknown workload {value!r}: use one of {', '.join(PRESETS)} or a batch size (int)"
        )

    def __str__(self) -> str:
        return f"{self.name} ({self.tokens_per_forward} token(s) per forward)"


INTERACTIVE = Workload("interactive", 1)
SERVING = Workload("serving", 64)
PRESETS: dict[str, Workload] = {"interactive": INTERACTIVE, "serving": SERVING}


@dataclass(frozen=True)
class Rejection:
    kernel: KernelSpec
    reason: str


@dataclass(frozen=True)
class Selection:
    """The chosen kernel, the layout its weights must be in, and why; plus every loser; and the
    dispatch plan of the GPU selected for (``plan``: the path per number of tokens, the tiles
    measured on this chip, its SMs), which ``load_quantized`` hands to this library's layers
    (None for a GPU named only by its capability)."""

    kernel: KernelSpec
    target: Target
    workload: Workload
    checkpoint_version: Layout | None
    reasons: tuple[str, ...]
    rejected: tuple[Rejection, ...] = field(default=())
    measured: MeasuredCrossover | None = None
    plan: DispatchPlan | None = None

    @property
    def name(self) -> str:
        return self.kernel.name

    @property
    def layout(self) -> Layout:
        return self.kernel.layout

    @property
    def needs_conversion(self) -> bool:
        """True when the checkpoint's layout must be converted (losslessly) for this kernel."""
        return self.checkpoint_version is not None and self.checkpoint_version != self.kernel.layout

    def for_engine(self, engine: str, *, group_size: int = 128, zero_point: bool = True) -> Any:
        """What ``engine`` ("vllm", "transformers") would run for this selection's checkpoint on its
        GPU, and what to export first: :func:`~awq_kernel_select.engines.engine_choice` (an
        ``EngineChoice``; ``engine_choice_for(path, ...)`` reads group size and zero points from a
        checkpoint)."""
        from .engines import engine_choice

        fmt = "autoawq-gemv" if self.checkpoint_version == "gemv" else "autoawq-gemm"
        capability = self.target.capability if self.target.device == "cuda" else None
        return engine_choice(engine, fmt, capability=capability, group_size=group_size,  # type: ignore[arg-type]
                             zero_point=zero_point)

    def explain(self) -> str:
        lines = [f"selected: {self.kernel.name} (layout {self.kernel.layout}) for {self.workload} on {self.target}"]
        lines += [f"  - {reason}" for reason in self.reasons]
        if self.rejected:
            lines.append("rejected:")
            lines += [f"  {r.kernel.name}: {r.reason}" for r in self.rejected]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel.name,
            "layout": self.kernel.layout,
            "provider": self.kernel.provider,
            "checkpoint_version": self.checkpoint_version,
            "needs_conversion": self.needs_conversion,
            "target": {
                "device": self.target.device,
                "capability": list(self.target.capability) if self.target.capability else None,
                "arch": self.target.arch,
            },
            "workload": {"name": self.workload.name, "tokens_per_forward": self.workload.tokens_per_forward},
            "reasons": list(self.reasons),
            "rejected": [{"kernel": r.kernel.name, "reason": r.reason} for r in self.rejected],
            "measured_crossover": self.measured.to_dict() if self.measured else None,
            "plan": None if self.plan is None else {
                "gpu": self.plan.gpu, "multiprocessors": self.plan.multiprocessors,
                "gemv_max_tokens": self.plan.policy.gemv_max_tokens,
                "dequant_min_tokens": self.plan.policy.dequant_min_tokens,
                "tuned_tiles": len(self.plan.tiles), "tiles": self.plan.tiles_note,
                "crossover_tokens": self.plan.crossover_tokens},
        }


class NoKernelError(RuntimeError):
    """No row of the policy table can run the request here; the message lists every reason."""

    def __init__(self, message: str, rejected: Sequence[Rejection]):
        super().__init__(message)
        self.rejected = tuple(rejected)


def target_from_detection(detection: Detection, index: int | None = None) -> Target:
    """The target of GPU ``index`` of ``detection`` (None: its primary GPU, or the CPU without one)."""
    if index is not None:
        if not 0 <= index < len(detection.gpus):
            raise DeviceIndexError(f"device={index}: {len(detection.gpus)} GPU(s) visible; use an index below "
                                   f"{len(detection.gpus)}" if detection.gpus else f"device={index}: no GPU is visible")
        gpu: GpuInfo | None = detection.gpus[index]
    else:
        gpu = detection.primary
    if gpu is None:
        return Target("cpu")
    if gpu.backend == "rocm":
        return Target("rocm", None, gpu.arch, gpu.name)
    return Target("cuda", gpu.capability, gpu.arch, gpu.name, gpu.multiprocessors)


def _why_not(
    row: KernelSpec,
    target: Target,
    tokens: int,
    version: Layout | None,
    zero_point: bool | None,
    verdict_of: Mapping[str, Verdict],
) -> list[str]:
    """Every reason ``row`` cannot serve this request; empty when it can."""
    why: list[str] = []
    if target.device not in row.devices:
        why.append(f"runs on {'/'.join(row.devices)}, not {target.device}")
    elif target.device == "cuda" and target.capability is not None:
        cap = target.capability
        if row.min_capability is not None and cap < row.min_capability:
            why.append(f"needs compute capability >= {row.min_capability}, GPU has {cap}")
        if row.max_capability is not None and cap > row.max_capability:
            why.append(f"built for compute capability <= {row.max_capability}, GPU has {cap}")
    if not row.covers(tokens):
        why.append(f"good for {row.describe_tokens()} tokens per forward, workload has {tokens}")
    if version is not None and version != row.layout and (version, row.layout) not in CONVERTIBLE:
        why.append(f"reads the {row.layout} layout; a {version} checkpoint cannot be converted to it")
    if row.zero_point is not None and zero_point is not None and row.zero_point != zero_point:
        why.append(f"needs zero_point={row.zero_point}, checkpoint has zero_point={zero_point}")
    if not why:  # only probe what could otherwise run: probes import heavy modules
        why += [verdict_of[req].reason for req in row.requires if not verdict_of[req]]
    return why


def select_kernel(
    capability: ComputeCapability | tuple[int, int] | None = None,
    workload: str | int | Workload = "interactive",
    checkpoint_version: str | None = None,
    *,
    device: str | int | None = None,
    zero_point: bool | None = None,
    force: str | None = None,
    table: PolicyTable | None = None,
    probes: Mapping[str, Verdict | Probe] | None = None,
    detection: Detection | None = None,
    use_measured: bool = True,
    assume: Collection[str] = (),
) -> Selection:
    """Pick the AWQ kernel for this GPU and workload, from the rows that can run here.

    ``capability`` (e.g. ``(8, 6)``) names a CUDA GPU without detecting one; without it the
    visible GPU 0 is detected (no GPU: the CPU); ``device=i`` selects for visible GPU ``i`` (of
    ``detection`` where given), ``device="cpu"`` for the CPU. ``checkpoint_version`` ("gemm", "gemv", ...)
    rules out kernels whose layout the checkpoint cannot be converted to. ``force`` picks a
    row by name; it is still checked, and the reasons name the row it passed over.
    ``probes`` overrides availability checks by requirement name (tests); ``assume`` names
    requirements taken as met without probing (what-if questions about a GPU not present).
    Raises :class:`NoKernelError` listing every row's reason when nothing fits.
    """
    table = DEFAULT_TABLE if table is None else table
    work = Workload.parse(workload)
    version = _parse_version(checkpoint_version)
    if isinstance(device, bool):
        raise TypeError(f"device={device!r}: give a GPU index, 'cuda' or 'cpu'")
    if isinstance(device, int):  # one GPU of several: its own selection
        target = target_from_detection(detection or detect_compute_capability(), device)
    elif capability is not None:
        target = Target(device or "cuda", ComputeCapability(*capability))
    elif device is not None and device != "cuda":
        target = Target(device)
    else:
        target = target_from_detection(detection or detect_compute_capability())

    facts = facts_for_target(target)  # what was measured on this GPU model, read now
    plan = plan_for_target(target, facts)
    measured = facts.crossover if use_measured and facts is not None else None
    rows = [_apply_measured(row, measured) for row in table] if measured else list(table)

    def verdict(name: str) -> Verdict:
        given = (probes or {}).get(name)
        if given is None and name in assume:
            return Verdict(True, f"{name} assumed available (what-if)")
        if given is None:
            return check(name, target)
        return given if isinstance(given, Verdict) else given(target)

    requirements = {req for row in rows for req in row.requires}
    verdicts = _LazyVerdicts(verdict, requirements)
    tokens = work.tokens_per_forward
    fits: list[KernelSpec] = []
    rejected: list[Rejection] = []
    for row in sorted(rows, key=lambda r: -r.priority):
        why = _why_not(row, target, tokens, version, zero_point, verdicts)
        if why:
            rejected.append(Rejection(row, "; ".join(why)))
        else:
            fits.append(row)

    if force is not None:
        chosen = next((r for r in rows if r.name == force), None)
        if chosen is None:
            raise KeyError(f"no kernel named {force!r}; known: {', '.join(r.name for r in rows)}")
        if chosen not in fits:
            reason = next(r.reason for r in rejected if r.kernel.name == force)
            raise NoKernelError(f"kernel {force!r} was asked for but cannot run here: {reason}", rejected)
    elif not fits:
        details = "\n".join(f"  {r.kernel.name}: {r.reason}" for r in rejected)
        raise NoKernelError(
            f"no AWQ kernel can run {work} on {target}"
            + (f" for a {version} checkpoint" if version else "")
            + f":\n{details}",
            rejected,
        )
    else:
        chosen = fits[0]

    reasons = [f"{chosen.name} fits {target} and {work}, with priority {chosen.priority} ({chosen.source})"]
    if force is not None:
        reasons[0] = f"{chosen.name} was asked for by name and can run on {target}"
        if fits and fits[0] is not chosen:
            reasons.append(f"{fits[0].name} (priority {fits[0].priority}) also fits and was passed over")
    if chosen.tested_on and target.capability is not None and target.capability not in chosen.tested_on:
        tested = ", ".join(str(c) for c in chosen.tested_on)
        reasons.append(f"note: this library tested {chosen.name} on compute capability {tested} only")
    if version is not None and version != chosen.layout:
        reasons.append(f"the {version} checkpoint is converted losslessly to the {chosen.layout} layout")
    if measured is not None and chosen.provider == "awq_kernel_select":
        reasons.append(f"GEMV/GEMM crossover measured on this GPU: {measured.describe()}")
    if chosen.provider == "awq_kernel_select" and plan is not None and target.device == "cuda":
        reasons.append(f"dispatch plan: {plan.describe()}")
    # Rows that fit in every way but an import: say so, a user may be able to fix that.
    for r in rejected:
        probed = all(q in verdicts for q in r.kernel.requires)
        if probed and r.reason == "; ".join(verdicts[q].reason for q in r.kernel.requires if not verdicts[q]):
            rank = "ranks higher" if r.kernel.priority > chosen.priority else "would also fit"
            reasons.append(f"{r.kernel.name} {rank} but cannot run here: {r.reason}")
    others = tuple(r for r in rejected if r.kernel is not chosen) + tuple(
        Rejection(r, f"fits, but {chosen.name} ranks higher ({chosen.priority} > {r.priority})")
        for r in fits
        if r is not chosen
    )
    return Selection(chosen, target, work, version, tuple(reasons), others, measured, plan)


class _LazyVerdicts(dict[str, Verdict]):
    """Runs a probe the first time its requirement is looked up."""

    def __init__(self, verdict: Any, names: set[str]):
        super().__init__()
        self._verdict = verdict
        self._names = names

    def __missing__(self, name: str) -> Verdict:
        value: Verdict = self._verdict(name)
        self[name] = value
        return value


def _parse_version(version: str | None) -> Layout | None:
    if version is None:
        return None
    lowered = version.lower()
    for known in VERSIONS:
        if lowered == known:
            return known
    raise ValueError(f"unknown AWQ checkpoint version {version!r}; known: {', '.join(VERSIONS)}")


def _apply_measured(row: KernelSpec, measured: MeasuredCrossover) -> KernelSpec:
    """Move the token range of a row that follows the crossover (``KernelSpec.follows_crossover``)
    to the one measured on this GPU."""
    if not row.follows_crossover:
        return row
    return replace(row, tokens=(1, max(1, measured.crossover_tokens - 1)))
