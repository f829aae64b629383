"""Test set-up: Triton kernels run in the interpreter on machines without a CUDA GPU.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set
here, before the test modules import the kernels.

``scripts/run-tests.sh`` runs the suite on two processes (pytest-xdist, whole files per process);
each then takes one CPU thread, and the slow tests are handed out first, so that they run beside
the rest of the suite rather than after it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order


@pytest.fixture(scope="package")  # every test file under tests/ shares it
def fp16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fp16 Llama and its tokenizer, saved once (read-only: tests write beside it)."""
    import tiny

    return tiny.save_tiny(tmp_path_factory.mktemp("tiny") / "fp16")
