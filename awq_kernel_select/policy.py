"""The capability-to-kernel policy table: data, read top to bottom, one source per row.

Every AWQ kernel we know of is one :class:`KernelSpec` row: the packed layout it reads, the
devices and compute capabilities it supports, the tokens per forward it is good for, what
must import for it to run here, a priority, and the runner that loads a checkpoint onto it
(``runners.py``). :func:`awq_kernel_select.select_kernel`
keeps the rows that fit the hardware, the workload and this Python environment, and picks
the highest priority; every other row is reported with the reason it lost.

Add or override a row in a few lines::

    from awq_kernel_select import CC, KernelSpec, OursRunner, register_kernel
    register_kernel(KernelSpec(name="my_gemv", layout="gemv", min_capability=CC(8, 0),
                               tokens=(1, 4), priority=99, requires=("my_ext",),
                               runner=OursRunner(), source="my benchmarks"))

Capabilities below were checked at their sources (see the comment on each row, and
``docs/policy.md`` for what the seed documents claimed and what the sources say).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Literal

from .detect import ComputeCapability as CC
from .layouts import CHECKPOINT_VERSIONS
from .runners import AutoAWQRunner, OursRunner, Runner

Layout = Literal["gemm", "gemv", "gemv_fast", "marlin"]
Device = Literal["cuda", "rocm", "cpu", "xpu"]
Provider = Literal["awq_kernel_select", "autoawq"]

#: Layouts this library converts between without loss (see ``layouts.py``).
CONVERTIBLE: frozenset[tuple[Layout, Layout]] = frozenset({("gemm", "gemv"), ("gemv", "gemm")})

UNBOUNDED = 1 << 30  # "any number of tokens per forward"
VERSIONS: tuple[Layout, ...] = CHECKPOINT_VERSIONS  # type: ignore[assignment]


@dataclass(frozen=True)
class KernelSpec:
    """One row of the policy table."""

    name: str
    layout: Layout  # the packed layout the kernel reads (AutoAWQ's ``version``)
    source: str  # where the facts in this row come from
    devices: tuple[Device, ...] = ("cuda",)
    min_capability: CC | None = None  # CUDA only; None means "no lower bound known"
    max_capability: CC | None = None  # CUDA only; e.g. extensions built without PTX
    tokens: tuple[int, int] = (1, UNBOUNDED)  # tokens per forward it is good for, inclusive
    requires: tuple[str, ...] = ()  # probe names from ``probes.PROBES``
    priority: int = 0  # higher wins among the rows that fit
    provider: Provider = "autoawq"
    zero_point: bool | None = None  # None: either; False: symmetric checkpoints only (Marlin)
    tested_on: tuple[CC, ...] = ()  # capabilities this library ran it on
    notes: str = ""
    runner: Runner | None = None  # loads a checkpoint onto this kernel (runners.py); required to register
    #: the small-M side of a measured GEMV/GEMM crossover: where the GPU has one
    #: (``measured.py``), this row's token range becomes 1 .. crossover - 1
    follows_crossover: bool = False

    def __post_init__(self) -> None:
        if self.layout not in VERSIONS:
            raise ValueError(f"KernelSpec {self.name!r}: layout={self.layout!r}; known layouts: {', '.join(VERSIONS)}")

    def covers(self, tokens: int) -> bool:
        return self.tokens[0] <= tokens <= self.tokens[1]

    def describe_tokens(self) -> str:
        low, high = self.tokens
        return f"{low}+" if high >= UNBOUNDED else (f"{low}" if low == high else f"{low}-{high}")


@dataclass
class PolicyTable:
    """An ordered collection of rows, looked up by name; printable as a table."""

    rows: list[KernelSpec] = field(default_factory=list)

    def __iter__(self) -> Iterator[KernelSpec]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> KernelSpec:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no kernel named {name!r}; known: {', '.join(r.name for r in self.rows)}")

    def __contains__(self, name: object) -> bool:
        return any(row.name == name for row in self.rows)

    def register(self, spec: KernelSpec, *, replace_existing: bool = True) -> None:
        """Add ``spec``; a row of the same name is replaced (or refused). A row must say what
        runs it: one without a runner is refused."""
        if spec.runner is None or not callable(spec.runner):
            raise ValueError(
                f"kernel row {spec.name!r} has no runner, so nothing would run when it is selected: add "
                f"runner=OursRunner() (this library's modules), runner=AutoAWQRunner(...) (AutoAWQ's loader), or "
                f"your own callable taking an awq_kernel_select.runners.LoadRequest (examples/custom_policy_row.py)")
        for i, row in enumerate(self.rows):
            if row.name == spec.name:
                if not replace_existing:
                    raise ValueError(f"a kernel named {spec.name!r} is already in the table")
                self.rows[i] = spec
                return
        self.rows.append(spec)

    def remove(self, name: str) -> KernelSpec:
        row = self[name]
        self.rows.remove(row)
        return row

    def copy(self) -> PolicyTable:
        return PolicyTable(list(self.rows))

    def with_overrides(self, name: str, **changes: object) -> PolicyTable:
        """A copy with some fields of one row changed: ``table.with_overrides("aks_gemv", priority=0)``."""
        table = self.copy()
        table.register(replace(table[name], **changes))  # type: ignore[arg-type]
        return table

    def format(self) -> str:
        """The table as fixed-width text, highest priority first."""
        header = ("kernel", "layout", "devices", "capability", "tokens", "requires", "prio", "source")
        lines = [header]
        for row in sorted(self.rows, key=lambda r: -r.priority):
            low = str(row.min_capability) if row.min_capability else "-"
            high = str(row.max_capability) if row.max_capability else ""
            lines.append(
                (
                    row.name,
                    row.layout,
                    ",".join(row.devices),
                    f"{low}..{high}" if row.min_capability or row.max_capability else "any",
                    row.describe_tokens(),
                    ",".join(row.requires) or "-",
                    str(row.priority),
                    row.source,
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1]
            for line in lines
        )

    def __str__(self) -> str:
        return self.format()


# --- the seed table -------------------------------------------------------------------------
# Priorities: this library's Triton kernels first (they beat fp16 on the H100, docs/kernels.md);
# then AutoAWQ's compiled kernels; then AutoAWQ's Triton GEMM (0.45-0.65x fp16 at M=1 on the
# H100, shared/PEERS.md); the plain torch path last, because it always runs.
# AutoAWQ's extensions are built for COMPUTE_CAPABILITIES "75,80,86,87,89,90" with no PTX
# (AutoAWQ_kernels setup.py, v0.0.7+), hence max 9.0 on every ``autoawq`` CUDA row.

_AWQ_EXT_CAPS = dict(min_capability=CC(7, 5), max_capability=CC(9, 0))
_TRITON_MIN = CC(8, 0)  # triton-lang/triton README.md: "NVIDIA GPUs (Compute Capability 8.0+)"

DEFAULT_ROWS: tuple[KernelSpec, ...] = (
    # This library's kernels (kernels/gemv.py, kernels/gemm.py). Each dispatches per call on M;
    # the row's token range says which regime its layout is best for.
    KernelSpec(
        name="aks_gemv",
        runner=OursRunner(),
        layout="gemv",
        devices=("cuda",),
        min_capability=_TRITON_MIN,
        # docs/kernels.md (H100): the GEMV layout leads at M = 1-3 in fp16 and bf16 (and at 4 in
        # fp16 only), the GEMM layout from M = 8
        tokens=(1, 3),
        follows_crossover=True,
        requires=("triton_gpu",),
        priority=100,
        provider="awq_kernel_select",
        tested_on=(CC(9, 0),),
        source="this library (Triton); Triton README: sm80+; timed in docs/kernels.md",
        notes="split-K FMA GEMV on AutoAWQ's GEMV layout (M <= 4), fp16x2-decoded tl.dot above",
    ),
    KernelSpec(
        name="aks_gemm",
        runner=OursRunner(),
        layout="gemm",
        devices=("cuda",),
        min_capability=_TRITON_MIN,
        tokens=(1, UNBOUNDED),
        requires=("triton_gpu",),
        priority=95,
        provider="awq_kernel_select",
        tested_on=(CC(9, 0),),
        source="this library (Triton); Triton README: sm80+; timed in docs/kernels.md",
        notes="fused dequantize + tl.dot for mid M, dequantize + cuBLAS for large M; GEMV kernel at small M",
    ),
    # AutoAWQ 0.2.9, compiled kernels (package autoawq-kernels).
    KernelSpec(
        name="autoawq_gemv",
        runner=AutoAWQRunner(module_class="WQLinear_GEMV"),
        layout="gemv",
        tokens=(1, 1),  # AutoAWQ README: "GEMV ... only batch size 1"; code: gemv <= 8 rows
        requires=("awq_ext",),
        priority=60,
        source="AutoAWQ README (7.5+, batch 1); awq/modules/linear/gemv.py",
        **_AWQ_EXT_CAPS,  # type: ignore[arg-type]
    ),
    KernelSpec(
        name="autoawq_gemm",
        runner=AutoAWQRunner(module_class="WQLinear_GEMM"),
        layout="gemm",
        tokens=(1, UNBOUNDED),  # README: "much faster than FP16 at batch sizes below 8"
        requires=("awq_ext",),
        priority=55,
        source="AutoAWQ README (7.5+); awq/modules/linear/gemm.py",
        **_AWQ_EXT_CAPS,  # type: ignore[arg-type]
    ),
    KernelSpec(
        name="autoawq_gemv_fast",
        runner=AutoAWQRunner(),
        layout="gemv_fast",
        min_capability=CC(8, 0),  # awq_v2_ext: "only compatible with ampere" (gemv_fast.py)
        max_capability=CC(9, 0),
        tokens=(1, 7),  # decode kernel when batch < 8, else its prefill GEMM
        requires=("awq_v2_ext",),
        priority=65,
        source="awq/modules/linear/gemv_fast.py",
    ),
    KernelSpec(
        name="autoawq_marlin",
        runner=AutoAWQRunner(),
        layout="marlin",
        min_capability=CC(8, 0),  # IST-DASLab/marlin README: Ampere or newer
        max_capability=CC(9, 0),
        requires=("marlin_cuda",),
        priority=70,
        zero_point=False,  # marlin.py from_linear: assert zeros is None
        source="awq/modules/linear/marlin.py; Marlin README (sm80+)",
    ),
    KernelSpec(
        name="autoawq_exllama_v2",
        runner=AutoAWQRunner(flags=(("use_exllama_v2", True),)),
        layout="gemm",  # GEMM checkpoints only (awq/models/base.py)
        requires=("exlv2_ext",),
        priority=50,
        source="awq/models/base.py (use_exllama_v2, GEMM only); AutoAWQ_kernels setup.py archs",
        **_AWQ_EXT_CAPS,  # type: ignore[arg-type]
    ),
    KernelSpec(
        name="autoawq_exllama",
        runner=AutoAWQRunner(flags=(("use_exllama", True),)),
        layout="gemm",
        requires=("exl_ext",),
        priority=45,
        source="awq/models/base.py (use_exllama, GEMM only); AutoAWQ_kernels setup.py archs",
        **_AWQ_EXT_CAPS,  # type: ignore[arg-type]
    ),
    KernelSpec(
        name="autoawq_ipex",
        runner=AutoAWQRunner(flags=(("use_ipex", True),)),
        layout="gemm",
        devices=("cpu", "xpu"),
        requires=("ipex",),
        priority=40,
        source="awq/modules/linear/gemm_ipex.py (IPEX >= 2.4); awq/models/base.py",
    ),
    KernelSpec(
        name="autoawq_triton_gemm",
        runner=AutoAWQRunner(module_class="WQLinear_GEMM"),
        layout="gemm",
        devices=("cuda", "rocm"),  # gemm.py: "covers CUDA, ROCm and XPU"
        min_capability=_TRITON_MIN,
        requires=("triton_gpu",),
        priority=20,
        source="awq/modules/linear/gemm.py, awq/modules/triton/gemm.py; Triton README: sm80+",
        notes="0.45-0.65x the speed of fp16 at M=1 on the H100 (shared/PEERS.md)",
    ),
    # The plain torch path: dequantize, then matmul. Runs wherever torch runs.
    KernelSpec(
        name="torch_dequant",
        runner=OursRunner(path="torch", layout="checkpoint"),
        layout="gemm",
        devices=("cuda", "rocm", "cpu", "xpu"),
        requires=("torch_cuda_arch",),  # checked on GPUs only; see select.py
        priority=0,
        provider="awq_kernel_select",
        tested_on=(CC(9, 0),),
        source="this library (kernels/reference.py); runs where torch has code for the device",
        notes="reads both layouts; slow but always correct",
    ),
)

DEFAULT_TABLE = PolicyTable(list(DEFAULT_ROWS))


def register_kernel(spec: KernelSpec, *, table: PolicyTable | None = None) -> None:
    """Add or replace a row of the default table (or of ``table``)."""
    (DEFAULT_TABLE if table is None else table).register(spec)


def reset_default_table(rows: Iterable[KernelSpec] = DEFAULT_ROWS) -> None:
    """Put the default table back as shipped (tests use this)."""
    DEFAULT_TABLE.rows[:] = list(rows)
