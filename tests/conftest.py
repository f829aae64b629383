"""Test set-up: Triton kernels run in the interpreter on machines without a CUDA GPU.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set
here, before the test modules import the kernels.
"""

from __future__ import annotations

import os

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
