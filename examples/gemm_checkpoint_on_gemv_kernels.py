"""Load a GEMM-version checkpoint onto GEMV-layout kernels (converted losslessly at load).

On a GPU, `kernel="aks_gemv"` runs this library's GEMV kernel; on any machine `layout="gemv"`
holds the weights in the GEMV layout. Run with a checkpoint folder:
    python examples/gemm_checkpoint_on_gemv_kernels.py PATH
"""

import sys

import torch

from awq_kernel_select import load_quantized

path = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
if torch.cuda.is_available():
    model = load_quantized(path, kernel="aks_gemv")
else:
    model = load_quantized(path, layout="gemv")
print(model.awq_kernel_selection.explain().splitlines()[:3])
print(sorted(set(model.awq_kernel_layers.values())))
