"""Add a kernel row of your own to the policy table, see it win (or lose, with its reason), and
load a checkpoint onto it. A row says when it should run (capability, tokens, what must import)
and what runs it (its runner): here the plain-torch path, under a new name, for a new GPU family.

    python examples/custom_policy_row.py [CHECKPOINT]     # with an AutoAWQ checkpoint folder: loads it
"""

import sys

from awq_kernel_select import (CC, KernelSpec, LoadRequest, OursRunner, Verdict, load_quantized, register_kernel,
                               register_probe, select_kernel)


def my_runner(request: LoadRequest) -> object:
    """Any callable taking a LoadRequest; here this library's modules on the dequantize + matmul path."""
    print(f"loading {request.checkpoint.path} ({request.checkpoint.version}) for {request.selection.name}")
    return OursRunner(path="torch")(request)


# Your extension: a probe says whether it can run here, a row says when it should and what runs it.
register_probe("my_ext", lambda target: Verdict(True, "my_ext imports"))
register_kernel(KernelSpec(name="my_next_gen", layout="gemm", devices=("cuda", "cpu"), min_capability=CC(12, 0),
                           priority=150, requires=("my_ext",), runner=my_runner, source="my benchmarks, 2026-12"))

# What would a compute-capability-12.0 GPU run for one user, and an H100? (what-if: no such GPU needed)
for capability in ((12, 0), (9, 0)):
    selection = select_kernel(capability, "interactive", assume=("triton_gpu", "torch_cuda_arch"))
    print(selection.explain().splitlines()[0])

if len(sys.argv) > 1:
    model = load_quantized(sys.argv[1], device="cpu", kernel="my_next_gen")
    print(model.awq_kernel_layers)
