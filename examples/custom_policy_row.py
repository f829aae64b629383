"""Add a kernel of your own to the policy table, and see it win (or lose, with its reason)."""

from awq_kernel_select import CC, KernelSpec, Verdict, register_kernel, register_probe, select_kernel

# Your extension: a probe says whether it can run here, a row says when it should.
register_probe("my_ext", lambda target: Verdict(True, "my_ext imports"))
register_kernel(KernelSpec(name="my_gemv", layout="gemv", min_capability=CC(8, 0), tokens=(1, 4),
                           priority=150, requires=("my_ext",), source="my benchmarks, 2026-11"))

# What would an RTX 4090 (8.9) run for one user, and for a server? (what-if: no such GPU needed)
for workload in ("interactive", "serving"):
    selection = select_kernel((8, 9), workload, assume=("triton_gpu", "torch_cuda_arch"))
    print(selection.explain().splitlines()[0])
